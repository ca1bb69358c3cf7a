"""The routing brain's in-process classifier: MiniLM (int8 ONNX) + linear heads + rules.

`splitpin.core.router.classifier.Classifier` is what the flow calls; `splitpin.app.router_cli`
holds `splitpin router train|eval`. Kept import-free so the CLI starts fast.
"""
