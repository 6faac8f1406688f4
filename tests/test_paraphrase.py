from r2f.engine.paraphrase import RuleParaphraser, make_views, similarity


def test_views_shape_and_order(tofu):
    item = tofu.split("forget10")[0]
    v = make_views(item, 5)
    assert len(v.questions) == 5 and v.repeated == 0
    assert v.questions[0] == item.question
    assert v.questions[1] == item.paraphrased_question
    assert len(set(v.questions)) == 5
    assert v.answer == item.answer


def test_deterministic_and_filtered(tofu):
    for item in tofu.split("forget01"):
        a, b = make_views(item, 6), make_views(item, 6)
        assert a == b
        for q in a.questions[2:]:
            assert 0.2 <= similarity(item.question, q) <= 0.97


def test_pluggable_and_repeats(tofu):
    class Echo:
        def candidates(self, question):
            return [question, question.upper()]

    item = tofu.split("holdout01")[0]  # no TOFU paraphrase
    v = make_views(item, 4, Echo())
    assert len(v.questions) == 4 and v.repeated >= 2
    assert RuleParaphraser().candidates("What is it?")
