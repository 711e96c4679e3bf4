"""How tests/golden/step_losses.json was made: run on main at 7c92fc6 (before the n-D refactor) with
`python tests/golden/record_step_losses.py tests/golden/step_losses.json`; kept for reference (it uses that
version's API, where TrainConfig.patch_size was an int)."""
import json, os, sys, tempfile
from pathlib import Path
os.environ.setdefault("BENCH_CACHE_DIR", tempfile.mkdtemp())
sys.path.insert(0, "tests")
from benchmark import catalog
from benchmark.data.dataset import load_dataset
from benchmark.train import Trainer
from method_helpers import SMOKE, MetricRecorder
from methods.advmim import AdvMIM, AdvMIMConfig
from methods.bcp import BCP, BCPConfig
from methods.mean_teacher import MeanTeacher, MeanTeacherConfig
from methods.supervised import Supervised

card = catalog.get_card("synthetic-acdc")
data = load_dataset(card)
out = {}
for name, cls, cfg in [("supervised", Supervised, Supervised.Config()), ("mean-teacher", MeanTeacher, MeanTeacherConfig()),
                       ("bcp", BCP, BCPConfig()), ("advmim", AdvMIM, AdvMIMConfig(mask_block=16))]:
    rec = MetricRecorder()
    with tempfile.TemporaryDirectory() as d:
        Trainer(data, cls, cfg, SMOKE, 24, 0, Path(d), card.evaluation, card.classes, logger=rec, device="cpu", progress=False).fit()
    out[name] = {str(s): {k: v for k, v in m.items() if k.startswith("train/")} for s, m in rec.train.items()}
    print(name, out[name])
Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True))
