from protege.evaluate.metrics import score
from protege.evaluate.metrics.numeric import last_number


def test_exact_normalizes_case_space_quotes_period():
    assert score("exact", ' "2021-03-03". ', "2021-03-03")[0] == 1.0
    assert score("exact", "2021-03-04", "2021-03-03")[0] == 0.0
    assert score("exact", "", "x")[0] == 0.0


def test_numeric_takes_the_last_number():
    assert last_number("3 * 7 = 21\n21 + 19 = 40\nAnswer: 40") == 40.0
    assert last_number("costs -1,250.5 dollars") == -1250.5
    assert last_number("no digits") is None
    assert score("numeric", "so 40", "Answer: 40")[0] == 1.0
    assert score("numeric", "Answer: 41", "Answer: 40")[0] == 0.0
    assert score("numeric", "Answer: 40.0000001", "40", tolerance=1e-3)[0] == 1.0
    assert score("numeric", "", "40")[0] == 0.0
