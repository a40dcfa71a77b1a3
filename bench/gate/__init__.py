"""The CI gate: budgets checked against a run, JUnit output."""
