"""Studies: experiments built from the libraries (training runs, evaluations, reports), one module each."""
