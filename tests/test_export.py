"""`lstmbench export`: each exported model, run in its own runtime (torch, onnxruntime), gives
lstmbench's outputs (the reference backend's forward); safetensors round-trips the parameters bit
for bit; every bad input is a one-line error that writes nothing; docs/training.md's snippets run
as written (design.md section 11)."""

import errno
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.cli import main
from lstmbench.training import checkpoint as checkpoint_module
from lstmbench.training import export as lbexport
from lstmbench.training.checkpoint import load_checkpoint, save_checkpoint

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
st = pytest.importorskip("safetensors.numpy")

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "training.md"
DOC_SECTION = "## Taking a model elsewhere: torch, onnxruntime, safetensors"
NILE_CSV = ROOT / "lstmbench" / "data" / "bundled" / "nile.csv"
F32 = {"rtol": 1e-6, "atol": 1e-6}  # float32 rounding (eps 1.2e-7) over a few layers and steps
F64 = {"rtol": 0, "atol": 1e-12}  # a float64 torch export: the same math in the same precision

# (layers, many_to_many, loss, dtype): 1 to 3 layers, both task shapes, both losses, both dtypes
MODELS = [
    (1, False, "mse", "float64"),
    (2, True, "xent", "float64"),
    (3, False, "xent", "float64"),
    (3, True, "mse", "float64"),
    (2, False, "mse", "float32"),
    (1, True, "xent", "float32"),
]
MODEL_IDS = [f"L{n}-{'m2m' if m else 'm2o'}-{loss}-{dt}" for n, m, loss, dt in MODELS]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def model_case(layers, many_to_many, loss, dtype, seed):
    """A model with every parameter random (biases included, so that a misplaced bias shows), in
    a range where no gate saturates, and an input no other test uses."""
    cfg = lb.ModelConfig(input_size=3, hidden_size=5, output_size=4, num_layers=layers, loss=loss,
                         many_to_many=many_to_many, dtype=dtype)
    rng = np.random.default_rng(20_011 + seed)
    params = {k: rng.uniform(-0.7, 0.7, size=s).astype(dtype) for k, s in cfg.param_shapes().items()}
    x = rng.standard_normal((4, 9, cfg.input_size)).astype(dtype)
    return cfg, params, x


def reference(cfg, params, x):
    return lb.get_backend("numpy").forward(cfg, params, x)


def exported(tmp_path, cfg, params, fmt):
    """Write a checkpoint of (cfg, params), export it with the command, return the file."""
    ckpt = tmp_path / "model.npz"
    lb.save_params(ckpt, params, cfg)
    out = tmp_path / f"model.{lbexport.SUFFIX[fmt]}"
    assert main(["export", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    return out


def torch_modules(saved):
    """nn.LSTM(batch_first=True) + nn.Linear from an exported dict, as a torch user builds them."""
    model, weights = saved["config"]["model"], saved["state_dict"]
    dtype = getattr(torch, model["dtype"])
    lstm = torch.nn.LSTM(model["input_size"], model["hidden_size"], model["num_layers"], batch_first=True,
                         dtype=dtype)
    head = torch.nn.Linear(model["hidden_size"], model["output_size"], dtype=dtype)
    lstm.load_state_dict({k[len("lstm."):]: v for k, v in weights.items() if k.startswith("lstm.")})
    head.load_state_dict({k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")})
    return lstm, head


def run_torch(path, x, many_to_many):
    lstm, head = torch_modules(torch.load(path, weights_only=True))
    with torch.no_grad():
        h, _ = lstm(torch.from_numpy(x))
        return (head(h) if many_to_many else head(h[:, -1])).numpy()


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x.astype(np.float32)})[0]


# --- the exported models give lstmbench's outputs -------------------------------------------


@pytest.mark.parametrize("case", MODELS, ids=MODEL_IDS)
def test_torch_export_gives_lstmbench_outputs(tmp_path, case):
    cfg, params, x = model_case(*case, seed=MODELS.index(case))
    path = exported(tmp_path, cfg, params, "torch")
    saved = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert set(saved) == {"state_dict", "config"} and saved["config"] == {"model": cfg.to_dict()}
    L = cfg.num_layers
    keys = [f"lstm.{w}_l{k}" for k in range(L) for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert sorted(saved["state_dict"]) == sorted(keys + ["head.weight", "head.bias"])
    assert all(v.dtype == getattr(torch, cfg.dtype) for v in saved["state_dict"].values())
    got, want = run_torch(path, x, cfg.many_to_many), reference(cfg, params, x)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, **(F64 if cfg.dtype == "float64" else F32))


@pytest.mark.parametrize("case", MODELS, ids=MODEL_IDS)
def test_onnx_export_gives_lstmbench_outputs(tmp_path, case):
    cfg, params, x = model_case(*case, seed=10 + MODELS.index(case))
    path = exported(tmp_path, cfg, params, "onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.domain for o in model.opset_import] == [""] and model.opset_import[0].version == lbexport.ONNX_OPSET
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LSTM") == cfg.num_layers and ops[-2:] == ["MatMul", "Add"]
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    H = cfg.hidden_size
    for k in range(cfg.num_layers):  # W [1, 4H, D_k], R [1, 4H, H], B [1, 8H] = [b reordered, zeros]
        assert inits[f"l{k}.W"].shape == (1, 4 * H, cfg.layer_input_size(k))
        assert inits[f"l{k}.R"].shape == (1, 4 * H, H)
        assert inits[f"l{k}.B"].shape == (1, 8 * H) and not inits[f"l{k}.B"][0, 4 * H:].any()
    want = reference(cfg, params, x)
    np.testing.assert_allclose(run_onnx(path, x), want, **F32)
    # batch and time are free: another batch size and length on the same graph
    x2 = np.random.default_rng(20_111 + MODELS.index(case)).standard_normal((2, 15, cfg.input_size))
    np.testing.assert_allclose(run_onnx(path, x2), reference(cfg, params, x2.astype(cfg.dtype)), **F32)


def test_a_wrong_gate_order_is_caught(tmp_path, monkeypatch):
    """The comparison above can fail: ONNX's i, o, f, c taken as lstmbench's i, f, g, o is seen."""
    cfg, params, x = model_case(2, True, "mse", "float64", seed=30)
    monkeypatch.setattr(lbexport, "ONNX_GATE_ORDER", (0, 1, 2, 3))
    path = exported(tmp_path, cfg, params, "onnx")
    assert np.abs(run_onnx(path, x) - reference(cfg, params, x)).max() > 1e-2


def test_a_wrong_torch_bias_is_caught(tmp_path, monkeypatch):
    """...and so can the torch one: the bias in both of torch's biases counts it twice."""
    cfg, params, x = model_case(1, False, "mse", "float64", seed=31)
    real = lbexport.params_to_torch

    def doubled(p, c):
        sd = real(p, c)
        return {k: (sd[k.replace("hh", "ih")] if k.startswith("bias_hh") else v) for k, v in sd.items()}

    monkeypatch.setattr(lbexport, "params_to_torch", doubled)
    path = exported(tmp_path, cfg, params, "torch")
    assert np.abs(run_torch(path, x, False) - reference(cfg, params, x)).max() > 1e-2


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_safetensors_round_trips_the_parameters_bit_for_bit(tmp_path, dtype):
    cfg, params, _ = model_case(3, True, "xent", dtype, seed=40)
    path = exported(tmp_path, cfg, params, "safetensors")
    loaded = st.load_file(str(path))
    assert set(loaded) == set(params)
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        assert loaded[name].tobytes() == value.tobytes()
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert {k: json.loads(v) for k, v in f.metadata().items()} == {"model": cfg.to_dict()}


# --- runs of `lstmbench train`: the scaler or vocabulary travels with the model ---------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    (folder / "tiny.txt").write_text("the cat sat on the mat. the dog sat on the log.\n" * 12)
    assert main(["train", "--text-file", str(folder / "tiny.txt"), "--seq-len", "8", "--hidden", "6",
                 "--layers", "2", "--epochs", "1", "--dtype", "float64", "--backend", "numpy", "--quiet",
                 "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_a_text_run_exports_with_its_vocabulary(text_run, tmp_path, capsys):
    ckpt = load_checkpoint(text_run / "best.npz")
    vocab = ckpt.meta["vocab"]
    files = {}
    for fmt in lbexport.FORMATS:
        files[fmt] = tmp_path / f"text.{lbexport.SUFFIX[fmt]}"
        code, out, err = run(capsys, "export", text_run, "--format", fmt, "--out", files[fmt])
        assert code == 0, err
        assert out.startswith(f"wrote {files[fmt]}: {fmt}, a 2-layer many-to-many") and "vocabulary" in out
    config = torch.load(files["torch"], weights_only=True)["config"]
    assert config["vocabulary"] == vocab and config["task"] == "text" and config["seq_len"] == 8
    assert config["model"] == ckpt.model.to_dict()
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta == config
    from safetensors import safe_open

    with safe_open(str(files["safetensors"]), framework="numpy") as f:
        assert {k: json.loads(v) for k, v in f.metadata().items()} == config
    # one-hot symbols in, logits out: the same in every runtime
    ids = np.random.default_rng(20_211).integers(0, len(vocab), size=(3, 11))
    x = np.eye(len(vocab))[ids]
    want = reference(ckpt.model, ckpt.params, x)
    np.testing.assert_allclose(run_torch(files["torch"], x, True), want, **F64)
    np.testing.assert_allclose(run_onnx(files["onnx"], x), want, **F32)


# --- docs/training.md: the section's commands and snippets, run as written --------------------


def doc_blocks():
    """The fenced code blocks of the export section of docs/training.md (the last section)."""
    text = DOC.read_text()
    assert DOC_SECTION in text, f"docs/training.md has no section {DOC_SECTION!r}"
    section = text.split(DOC_SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)


def test_the_docs_snippets_run_and_give_predicts_forecast(tmp_path, capsys, monkeypatch):
    """The doc's commands (training cut to one epoch), then its torch and onnxruntime snippets:
    each forecast equals `lstmbench predict`'s to float32 rounding."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(NILE_CSV, tmp_path / "nile.csv")
    blocks = doc_blocks()
    commands = [shlex.split(line) for lang, body in blocks if lang == "" for line in body.splitlines()
                if line.startswith("lstmbench ")]
    train = [c for c in commands if c[1] == "train"]
    exports = [c for c in commands if c[1] == "export"]
    assert len(train) == 1 and sorted(c[c.index("--format") + 1] for c in exports) == sorted(lbexport.FORMATS)
    code, _, err = run(capsys, *train[0][1:], "--epochs", "1", "--hidden", "6", "--backend", "numpy", "--quiet")
    assert code == 0, err
    for command in exports:
        code, _, err = run(capsys, *command[1:])
        assert code == 0, err
    run_folder = Path(train[0][train[0].index("--out") + 1])
    code, out, err = run(capsys, "predict", run_folder / "best.npz", "--steps", "1", "--json", "--backend", "numpy")
    assert code == 0, err
    want = json.loads(out)["forecast"]
    snippets = {("torch" if "import torch" in body else "onnxruntime"): body for lang, body in blocks
                if lang == "python"}
    assert sorted(snippets) == ["onnxruntime", "torch"]
    for name, code_text in snippets.items():
        namespace: dict = {}
        exec(compile(code_text, f"docs/training.md ({name} snippet)", "exec"), namespace)  # noqa: S102 (the doc)
        np.testing.assert_allclose(namespace["forecast"], want, rtol=1e-6, err_msg=name)
    capsys.readouterr()


# --- bad input: one line, exit 2, nothing written --------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    cfg, params, _ = model_case(1, False, "mse", "float64", seed=50)
    path = tmp_path / "ok.npz"
    lb.save_params(path, params, cfg)
    return path


def refused(capsys, *argv, out):
    """Run the command; it must fail with one `error:` line and leave ``out`` as it was."""
    before = Path(out).read_bytes() if Path(out).is_file() else None
    code, stdout, err = run(capsys, "export", *argv, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert stdout == ""
    after = Path(out).read_bytes() if Path(out).is_file() else None
    assert after == before
    leftovers = list(Path(out).parent.glob(f".{Path(out).name}.*.tmp")) if Path(out).parent.is_dir() else []
    assert leftovers == []
    return lines[0]


@pytest.mark.parametrize("fmt", lbexport.FORMATS)
def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, capsys, fmt):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    assert "not an lstmbench checkpoint" in refused(capsys, text, "--format", fmt, out=tmp_path / "m")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    assert "lstmbench checkpoint" in refused(capsys, foreign, "--format", fmt, out=tmp_path / "m")
    assert "does not exist" in refused(capsys, tmp_path / "missing.npz", "--format", fmt, out=tmp_path / "m")
    (tmp_path / "folder").mkdir()
    assert "best.npz" in refused(capsys, tmp_path / "folder", "--format", fmt, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_damaged_checkpoint_is_refused(tmp_path, capsys, checkpoint):
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(checkpoint.read_bytes()[:-200])
    assert "damaged" in refused(capsys, damaged, "--format", "onnx", out=tmp_path / "m.onnx")


def test_a_run_whose_meta_was_edited_is_refused(tmp_path, capsys, checkpoint):
    ckpt = load_checkpoint(checkpoint)
    edited = tmp_path / "edited.npz"
    save_checkpoint(edited, ckpt.model, ckpt.params, meta={"task": "series", "window": 5, "horizon": 4,
                                                           "source": {"dataset": "nile"}})
    assert "damaged description" in refused(capsys, edited, "--format", "torch", out=tmp_path / "m.pt")


@pytest.mark.parametrize("fmt", lbexport.FORMATS)
def test_an_output_that_cannot_be_written_is_refused(tmp_path, capsys, checkpoint, fmt):
    (tmp_path / "a_file").write_text("x")
    assert "a_file" in refused(capsys, checkpoint, "--format", fmt, out=tmp_path / "a_file" / "m")
    assert "is a folder" in refused(capsys, checkpoint, "--format", fmt, out=tmp_path)
    assert "checkpoint being exported" in refused(capsys, checkpoint, "--format", fmt, out=checkpoint)
    load_checkpoint(checkpoint)  # still whole


@pytest.mark.parametrize("fmt", lbexport.FORMATS)
def test_a_failed_write_leaves_the_old_file_and_no_part(tmp_path, capsys, checkpoint, monkeypatch, fmt):
    out = tmp_path / "model.out"
    out.write_bytes(b"the previous export")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "fsync", full_disk)
    assert "no space left" in refused(capsys, checkpoint, "--format", fmt, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.out", "ok.npz"]


def test_an_unknown_format_is_a_usage_error(tmp_path, capsys, checkpoint):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(checkpoint), "--format", "keras", "--out", str(tmp_path / "m")])
    assert exc.value.code == 2 and "invalid choice: 'keras'" in capsys.readouterr().err
    with pytest.raises(lb.ConfigError, match="unknown export format"):
        lbexport.export(checkpoint, "keras", tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("fmt, module, install", [
    ("onnx", "onnx", "pip install 'lstmbench[export]'"),
    ("safetensors", "safetensors", "pip install 'lstmbench[export]'"),
    ("torch", "torch", "pip install torch"),
])
def test_a_missing_package_names_the_module_and_what_to_install(tmp_path, capsys, checkpoint, monkeypatch,
                                                                 fmt, module, install):
    for name in [m for m in list(sys.modules) if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    line = refused(capsys, checkpoint, "--format", fmt, out=tmp_path / "m")
    assert f"module '{module}" in line  # 'onnx', 'torch', 'safetensors.numpy'
    assert install in line
