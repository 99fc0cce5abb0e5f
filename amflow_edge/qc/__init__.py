"""Quality control: AM-Vision's decision rules, the reason catalogue and operator decisions."""
