"""A finished study: its Pareto report (compute), its files (render), model cards and export."""
