"""Local stand-ins for Hugging Face, Civitai, their CDNs and storage, on several loopback ports.

`server` has the generic parts (a host per port with routes and a request log; files served with
Range and failure knobs); `civitai` and `huggingface` answer with those services' real response
shapes and headers, built from in-memory files whose hashes are real.
"""
