"""sqcc's fuzzing harness (issue "Reliability under hostile input and faults").

What is mutated, and why: everything a user, a broken download or an attacker can hand sqcc —
model files (ONNX protobuf and TFLite flatbuffer edits at the structural level, plus byte-level
bit flips / truncation / overwritten and duplicated ranges), feed files (.npy / .npz / TensorProto
.pb, including pickled object arrays that must never be unpickled), images (truncated, tiny, huge
declared sizes, every PIL mode), package tars (tampered manifests and reports, links, traversal,
sparse 1 GiB members, truncation) and the command line itself (odd --target / --input-shape /
--pass / --budget values, unwritable -o paths, unicode, very long values). sqcc's contract is that
every such input ends as exactly one ``sqcc: error: ...`` line and exit 2 (or a correct result),
never a traceback, a crash, a hang, unbounded memory, or files left behind.

Modules: ``mutate`` (byte level), ``gen_*`` (one generator function per kind of edit), ``known``
(the cases from the issue), ``generators`` (seed + index → case), ``runner`` (fork server with a
subprocess fallback, limits), ``child`` (what runs in the child), ``classify`` (outcomes),
``campaign`` (durable cases.jsonl, resume), ``report`` (summary.md). See README.md.
"""
