"""What the rows mean: the run table, paired statistics, Pareto fronts, the judge, recommend."""
