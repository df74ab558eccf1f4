"""Each entry point's --help states each default once (argparse's ArgumentDefaultsHelpFormatter
appended "(default: None)" after a help that already said what the default is)."""
import re

import pytest

from bidir import compare, evaluate, trace


@pytest.mark.parametrize("main", [compare.main, evaluate.main, trace.main], ids=["compare", "eval", "trace"])
def test_help_states_no_default_twice(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and not re.search(r"\(default:[^)]*\) \(default:", text)
