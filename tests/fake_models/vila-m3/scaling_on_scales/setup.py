# fake (tests)
