"""`lstmbench export`: a trained model as a torch file, an ONNX graph or a safetensors file, with its
scaler or vocabulary (docs/training.md, "Taking a model elsewhere")."""

from __future__ import annotations

from lstmbench.training import export as lbexport


def register(sub) -> None:
    p = sub.add_parser("export", help="write a trained model for torch, onnxruntime or safetensors",
                       description=__doc__)
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder of `lstmbench train` (its best.npz is exported) or a checkpoint (.npz)")
    p.add_argument("--format", required=True, choices=lbexport.FORMATS,
                   help="torch: a torch.load-able dict (state_dict for nn.LSTM + nn.Linear, config); onnx: one "
                        "graph x -> y for onnxruntime (float32); safetensors: the parameters, config as metadata. "
                        f"onnx and safetensors need the export extra ({lbexport.INSTALL}), torch needs torch")
    p.add_argument("--out", required=True, help="the file to write (replaced atomically if it exists)")
    p.set_defaults(func=run)


def run(args) -> int:
    ckpt, config = lbexport.export(args.source, args.format, args.out)
    cfg = ckpt.model
    dtype = "float32" if args.format == "onnx" else cfg.dtype
    shape = "many-to-many" if cfg.many_to_many else "many-to-one"
    carried = {"scaler": "its scaler", "vocabulary": "its vocabulary"}
    extra = next((f", with {text}" for key, text in carried.items() if key in config), "")
    print(f"wrote {args.out}: {args.format}, a {cfg.num_layers}-layer {shape} LSTM ({cfg.input_size} in, "
          f"{cfg.hidden_size} hidden, {cfg.output_size} out, {cfg.loss}), {dtype}{extra}")
    return 0
