"""Names of the statistics and corrections the models give (no NumPy), shared
by the numerics and by the ``clusterh5 lm`` command's choices."""

from __future__ import annotations

#: per-term statistics, as ``broom::tidy`` (and ModelArray) names them
TERM_STATS: tuple[str, ...] = ("estimate", "std.error", "statistic", "p.value")
#: model statistics, as ``broom::glance`` (and ModelArray) names them
MODEL_STATS: tuple[str, ...] = (
    "r.squared",
    "adj.r.squared",
    "sigma",
    "statistic",
    "p.value",
    "df",
    "logLik",
    "AIC",
    "BIC",
    "deviance",
    "df.residual",
    "nobs",
)
#: R's ``p.adjust.methods``
PADJUST_METHODS: tuple[str, ...] = (
    "holm",
    "hochberg",
    "hommel",
    "bonferroni",
    "BH",
    "BY",
    "fdr",
    "none",
)
