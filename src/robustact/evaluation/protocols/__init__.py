"""Each defense's evaluation protocols (`paper`: the authors' settings; `adaptive`: attacks that know the
defense), registered with `robustact.evaluation.suites.register_suite`."""
