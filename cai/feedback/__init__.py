"""RLAIF feedback: the `sample` stage, the judge engine (`judge`), the `label` stage, and the preference maths."""
