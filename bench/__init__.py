"""Everything that measures: zoo, tasks, metrics, runner, results, reports."""
