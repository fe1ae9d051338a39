"""What happens to results: the safety screen and the outputs folder."""
