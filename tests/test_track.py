from benchmark.track import default_tracking_uri, flatten, param_key


def test_param_keys_are_mlflow_legal():
    flat = flatten({"dataset": {"labeled": {"aliases": {"3%": 3, "a*b": 1}}}, "seed": 0})
    assert flat == {"dataset.labeled.aliases.3pct": "3", "dataset.labeled.aliases.a_b": "1", "seed": "0"}
    assert param_key("train/lr rate:x") == "train/lr rate:x"


def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri() == "http://127.0.0.1:5000"
    assert default_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
