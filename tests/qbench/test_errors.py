from qbench.errors import describe, first_line


def test_first_line_and_describe():
    exc = RuntimeError("\n  [ONNXRuntimeError] : 1 : FAIL : bad node\n  at graph.cc:42\n")
    assert first_line(exc) == "[ONNXRuntimeError] : 1 : FAIL : bad node"
    assert describe(exc) == "RuntimeError: [ONNXRuntimeError] : 1 : FAIL : bad node"


def test_an_empty_message_does_not_raise():
    assert first_line(RuntimeError()) == ""
    assert describe(KeyError()) == "KeyError"
