"""The `eval` stage (`stage`): held-out generations, reward scores, `elo`, `refusal` detection, `metrics`, and the `report`."""
