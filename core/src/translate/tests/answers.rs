//! Answer goldens: upstream JSON answers into the other families' client answers.

use insta::assert_json_snapshot;
use serde_json::{Value, json};

use super::{ctx, ctx_with, fixture, opts};
use crate::translate::{Dialect, Usage, request, response, usage};

fn answer(from: Dialect, to: Dialect, name: &str) -> Value {
    response(from, to, &fixture(name), &ctx(false)).expect("translatable")
}

#[test]
fn anthropic_answer_with_cache_usage_and_tools_to_openai() {
    let out = answer(
        Dialect::Anthropic,
        Dialect::OpenAiChat,
        "anthropic_answer_tools",
    );
    // case 5: input 7 + cache read 9000 + cache creation 1000 -> prompt 10007, cached 9000
    assert_eq!(out["usage"]["prompt_tokens"], 10007);
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 9000);
    assert_eq!(out["usage"]["completion_tokens"], 50);
    assert_eq!(out["usage"]["total_tokens"], 10057);
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let u = usage(Dialect::Anthropic, &fixture("anthropic_answer_tools")).unwrap();
    assert_eq!(
        u,
        Usage {
            input: 10007,
            output: 50,
            cache_read: 9000,
            cache_creation: 1000,
            reasoning: 0
        }
    );
    assert_eq!(usage(Dialect::OpenAiChat, &out), Some(u));
    assert_json_snapshot!(out);
}

#[test]
fn anthropic_answer_to_gemini() {
    assert_json_snapshot!(answer(
        Dialect::Anthropic,
        Dialect::Gemini,
        "anthropic_answer_tools"
    ));
}

#[test]
fn a_matched_stop_sequence_stays_visible_and_comes_back_to_anthropic() {
    let out = answer(
        Dialect::Anthropic,
        Dialect::OpenAiChat,
        "anthropic_answer_stop_sequence",
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["choices"][0]["stop_reason"], "three");
    let back = response(Dialect::OpenAiChat, Dialect::Anthropic, &out, &ctx(false)).unwrap();
    assert_eq!(back["stop_reason"], "stop_sequence");
    assert_eq!(back["stop_sequence"], "three");
    assert_json_snapshot!(out);
}

#[test]
fn openai_answer_with_tools_and_cached_tokens_to_anthropic() {
    let out = answer(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        "openai_answer_tools",
    );
    assert_eq!(out["stop_reason"], "tool_use");
    assert_eq!(out["usage"]["input_tokens"], 176);
    assert_eq!(out["usage"]["cache_read_input_tokens"], 1024);
    assert_eq!(out["content"][2]["input"], json!({}));
    assert_json_snapshot!(out);
}

#[test]
fn openai_answer_with_tools_to_gemini() {
    let out = answer(Dialect::OpenAiChat, Dialect::Gemini, "openai_answer_tools");
    assert_eq!(out["usageMetadata"]["candidatesTokenCount"], 50);
    assert_eq!(out["usageMetadata"]["thoughtsTokenCount"], 30);
    assert_json_snapshot!(out);
}

#[test]
fn openai_reasoning_content_becomes_anthropic_thinking_and_gemini_thought() {
    let anthropic = answer(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        "openai_answer_reasoning",
    );
    assert_eq!(anthropic["content"][0]["type"], "thinking");
    assert_eq!(anthropic["stop_reason"], "stop_sequence");
    let gemini = answer(
        Dialect::OpenAiChat,
        Dialect::Gemini,
        "openai_answer_reasoning",
    );
    assert_eq!(
        gemini["candidates"][0]["content"]["parts"][0]["thought"],
        true
    );
    assert_json_snapshot!("openai_reasoning_to_anthropic", anthropic);
    assert_json_snapshot!("openai_reasoning_to_gemini", gemini);
}

#[test]
fn gemini_function_calls_get_unique_ids_and_stop_becomes_tool_calls() {
    let out = answer(Dialect::Gemini, Dialect::OpenAiChat, "gemini_answer_tools");
    let choice = &out["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    // the thought signature rides in the id, so an OpenAI client echoes it back
    assert!(
        calls[0]["id"]
            .as_str()
            .unwrap()
            .ends_with("__thought__Q2lnbmF0dXJl")
    );
    // deterministic: the same answer gets the same ids
    assert_eq!(
        out,
        answer(Dialect::Gemini, Dialect::OpenAiChat, "gemini_answer_tools")
    );
    let u = usage(Dialect::Gemini, &fixture("gemini_answer_tools")).unwrap();
    assert_eq!(
        u,
        Usage {
            input: 100,
            output: 50,
            cache_read: 64,
            cache_creation: 0,
            reasoning: 30
        }
    );
    assert_eq!(out["usage"]["completion_tokens"], 50);
    assert_json_snapshot!(out);
}

#[test]
fn gemini_answer_to_anthropic() {
    let out = answer(Dialect::Gemini, Dialect::Anthropic, "gemini_answer_tools");
    assert_eq!(out["stop_reason"], "tool_use");
    assert_json_snapshot!(out);
}

#[test]
fn gemini_safety_and_malformed_function_call_stay_visible() {
    let safety = answer(Dialect::Gemini, Dialect::OpenAiChat, "gemini_answer_safety");
    assert_eq!(safety["choices"][0]["finish_reason"], "content_filter");
    let malformed = answer(
        Dialect::Gemini,
        Dialect::OpenAiChat,
        "gemini_answer_malformed_call",
    );
    assert_eq!(
        malformed["choices"][0]["finish_reason"],
        "malformed_function_call"
    );
    let anthropic = answer(Dialect::Gemini, Dialect::Anthropic, "gemini_answer_safety");
    assert_eq!(anthropic["stop_reason"], "refusal");
}

#[test]
fn a_pause_turn_from_anthropic_is_not_a_silent_stop() {
    let mut body = fixture("anthropic_answer_stop_sequence");
    body["stop_reason"] = json!("pause_turn");
    body["stop_sequence"] = Value::Null;
    let out = response(Dialect::Anthropic, Dialect::OpenAiChat, &body, &ctx(false)).unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "pause_turn");
}

#[test]
fn shortened_tool_names_are_mapped_back_in_answers() {
    let long = "mcp__github__search_repositories_and_issues_across_every_organisation";
    let translated = request(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        &fixture("openai_options"),
        &opts(false),
    )
    .unwrap();
    let short = translated.body["tools"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let upstream = json!({"id": "msg", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": short, "input": {"query": "tollgate"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}});
    let out = response(
        Dialect::Anthropic,
        Dialect::OpenAiChat,
        &upstream,
        &ctx_with(false, translated.names),
    )
    .unwrap();
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        long
    );
}

#[test]
fn same_family_answers_pass_through_unchanged() {
    let body = fixture("anthropic_answer_tools");
    assert_eq!(
        response(Dialect::Anthropic, Dialect::Anthropic, &body, &ctx(false)).unwrap(),
        body
    );
}
