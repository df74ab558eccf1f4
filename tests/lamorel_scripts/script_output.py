"""What every script here ends with: its result, and the backend that served it, as JSON."""
import json


def write_result(caller, result: dict, path: str):
    """Writes `result` with the caller's backend class to `path`, then closes the caller."""
    result["backend"] = type(caller).__module__ + "." + type(caller).__name__
    with open(path, "w") as f:
        json.dump(result, f)
    caller.close()
