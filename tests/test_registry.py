"""The compressor registry: lookup, duplicate refusal, parameter validation."""

import pytest

import compressors
from compressors.core.base import CompressorConfig
from compressors.core.registry import UnknownCompressor, build, describe, lookup, register


def test_shipped_methods_are_registered():
    names = set(compressors.available())
    assert {"identity", "cast", "int8-dynamic"} <= names


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        @register("identity", config=CompressorConfig)
        class Again:  # noqa: B903
            pass


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownCompressor, match="did you mean int8-dynamic"):
        lookup("int8-dynamc")


def test_build_validates_parameters():
    assert build("cast", {"dtype": "bf16"}).config.dtype == "bf16"
    with pytest.raises(ValueError, match="no parameter 'bits'"):
        build("cast", {"bits": 4})
    with pytest.raises(ValueError, match="dtype must be one of"):
        build("cast", {"dtype": "fp8"})
    with pytest.raises(ValueError, match="per_channel' must be bool"):
        build("int8-dynamic", {"per_channel": "yes"})


def test_describe_lists_parameters_with_defaults():
    assert ("dtype", "str", "fp16") in describe("cast")


def test_config_is_json_params():
    assert build("int8-dynamic").config.to_params() == {"backend": "torch", "per_channel": True, "compile": False,
                                                      "include_output": False, "int8_settings": "auto"}
