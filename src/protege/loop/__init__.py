"""The loop that `protege run` reads top to bottom (run.py), and the stages it calls.

Modules import one way, bottom to top: state (run state, teacher budget) and results (what stages
hand each other) -> stage (stage keys, the teacher-stage helper) -> scoring -> data, training ->
selection -> run. import-linter checks the order."""
