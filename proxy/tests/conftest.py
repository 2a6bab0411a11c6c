import ollama
import openai
import pytest


@pytest.fixture
def ollama_for(gateway):
    """The official ollama client pointed at the gateway with a key."""

    def make(raw):
        return ollama.Client(host=gateway, headers={"Authorization": f"Bearer {raw}"})

    return make


@pytest.fixture
def openai_for(gateway):
    def make(raw):
        return openai.OpenAI(base_url=f"{gateway}/v1", api_key=raw, max_retries=0)

    return make
