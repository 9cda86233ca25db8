"""The data every layer shares: the cluster spec, records, findings, errors (pure, standard library)."""
