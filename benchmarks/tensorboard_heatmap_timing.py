"""Step time with the heat maps drawn (on) and with their drawing stubbed out (off): python benchmarks/tensorboard_heatmap_timing.py on|off."""
import sys, json, statistics, shutil
from lensjax import config as config_lib, runner
from lensjax.io import run_logger

if sys.argv[1] == "off":
  run_logger._Sink.heatmap = lambda *a, **k: None
  run_logger._Sink.layer_history_heatmap = lambda *a, **k: None
config = config_lib.load_config_file("configs/quickstart.py").updated({"train.steps": 300, "logging.log_every": 5, "logging.progress": "none", "logging.eval_every": 0})
shutil.rmtree("/tmp/tbtime", ignore_errors=True)
runner.train(config, "/tmp/tbtime")
times = [json.loads(l)["perf/step_time_s"] for l in open("/tmp/tbtime/metrics.jsonl") if "perf/step_time_s" in l]
print(sys.argv[1], "median step time (ms)", 1e3 * statistics.median(times[5:]), "over", len(times[5:]), "logging intervals")
