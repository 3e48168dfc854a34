//! Stream goldens: upstream SSE event lists into the client family's SSE event lists.

use std::collections::BTreeMap;

use insta::assert_json_snapshot;
use serde_json::{Value, json};

use super::{ctx, ctx_with, datas, events, fixture, opts, render, translate_stream};
use crate::translate::{Dialect, SseEvent, StreamTranslator, Usage, request};

/// Client OpenAI chunks -> per tool index: (ids seen, names seen, concatenated arguments).
fn tool_calls(chunks: &[Value]) -> BTreeMap<u64, (Vec<String>, Vec<String>, String)> {
    let mut calls: BTreeMap<u64, (Vec<String>, Vec<String>, String)> = BTreeMap::new();
    for chunk in chunks {
        let Some(deltas) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for d in deltas {
            let entry = calls.entry(d["index"].as_u64().unwrap()).or_default();
            if let Some(id) = d["id"].as_str() {
                entry.0.push(id.to_string());
            }
            if let Some(name) = d["function"]["name"].as_str() {
                entry.1.push(name.to_string());
            }
            entry
                .2
                .push_str(d["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    calls
}

#[test]
fn anthropic_text_tool_text_tool_stream_becomes_openai_chunks_with_stable_tool_indexes() {
    let input = events("anthropic_stream_text_tool_text_tool");
    let (out, translator) =
        translate_stream(Dialect::Anthropic, Dialect::OpenAiChat, ctx(true), &input);
    let chunks = datas(&out);
    let calls = tool_calls(&chunks);
    assert_eq!(calls.keys().copied().collect::<Vec<_>>(), [0, 1]);
    for (ids, names, arguments) in calls.values() {
        assert_eq!(ids.len(), 1, "id only in the first delta");
        assert_eq!(names.len(), 1, "name only in the first delta");
        assert!(
            serde_json::from_str::<Value>(arguments)
                .unwrap()
                .is_object(),
            "{arguments}"
        );
    }
    assert_eq!(calls[&0].2, r#"{"city": "Paris"}"#);
    assert_eq!(
        calls[&1].2, "{}",
        "a tool_use without argument deltas gets {{}}"
    );
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0].get("finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    assert_eq!(
        translator.usage(),
        Usage {
            input: 10007,
            output: 50,
            cache_read: 9000,
            cache_creation: 1000,
            reasoning: 0
        }
    );
    assert!(!translator.failed());
    assert_json_snapshot!(render(&out));
}

#[test]
fn include_usage_on_adds_one_usage_chunk_after_the_finish_chunk_before_done() {
    let input = events("anthropic_stream_text_tool_text_tool");
    let (out, _) = translate_stream(Dialect::Anthropic, Dialect::OpenAiChat, ctx(true), &input);
    let n = out.len();
    assert_eq!(out[n - 1].data, "[DONE]");
    let usage: Value = serde_json::from_str(&out[n - 2].data).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 10007);
    assert_eq!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"],
        9000
    );
    let finish: Value = serde_json::from_str(&out[n - 3].data).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let usage_chunks = datas(&out)
        .iter()
        .filter(|c| c.get("usage").is_some())
        .count();
    assert_eq!(usage_chunks, 1);
}

#[test]
fn include_usage_off_adds_no_usage_chunk() {
    let input = events("anthropic_stream_text_tool_text_tool");
    let (out, _) = translate_stream(Dialect::Anthropic, Dialect::OpenAiChat, ctx(false), &input);
    assert!(datas(&out).iter().all(|c| c.get("usage").is_none()));
    assert!(datas(&out).iter().all(|c| c["choices"] != json!([])));
    assert_eq!(out.last().unwrap().data, "[DONE]");
}

#[test]
fn anthropic_stream_to_gemini_sends_function_calls_whole() {
    let input = events("anthropic_stream_text_tool_text_tool");
    let (out, _) = translate_stream(Dialect::Anthropic, Dialect::Gemini, ctx(false), &input);
    let last = datas(&out).pop().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        last["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
        json!({"city": "Paris"})
    );
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 10007);
    assert_json_snapshot!(render(&out));
}

#[test]
fn a_mid_stream_anthropic_error_reaches_an_openai_client_as_an_error_and_is_billed() {
    let input = events("anthropic_stream_error");
    let (out, translator) =
        translate_stream(Dialect::Anthropic, Dialect::OpenAiChat, ctx(true), &input);
    assert!(translator.failed());
    assert!(out.iter().all(|e| e.data != "[DONE]"));
    let last: Value = serde_json::from_str(&out.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["message"], "Overloaded");
    assert!(
        datas(&out)
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(translator.usage().input, 25);
    assert_json_snapshot!(render(&out));
}

#[test]
fn a_mid_stream_gemini_error_reaches_an_anthropic_client_without_message_stop() {
    let input = events("gemini_stream_error");
    let (out, translator) =
        translate_stream(Dialect::Gemini, Dialect::Anthropic, ctx(false), &input);
    assert!(translator.failed());
    let names: Vec<&str> = out.iter().filter_map(|e| e.event.as_deref()).collect();
    assert!(!names.contains(&"message_stop") && !names.contains(&"message_delta"));
    assert_eq!(names.last(), Some(&"error"));
    assert_eq!(
        translator.usage(),
        Usage {
            input: 10,
            output: 2,
            ..Usage::default()
        }
    );
    assert_json_snapshot!(render(&out));
}

#[test]
fn a_cut_openai_stream_ends_the_anthropic_client_stream_with_an_error() {
    let input = events("openai_stream_cut");
    let (out, translator) =
        translate_stream(Dialect::OpenAiChat, Dialect::Anthropic, ctx(false), &input);
    assert!(
        translator.failed(),
        "a cut is recorded as a failure, not a clean end"
    );
    let names: Vec<&str> = out.iter().filter_map(|e| e.event.as_deref()).collect();
    assert!(!names.contains(&"message_stop"));
    assert_eq!(names.last(), Some(&"error"));
    assert_json_snapshot!(render(&out));
}

#[test]
fn fail_after_a_cut_gives_the_client_family_error_once() {
    for to in [Dialect::OpenAiChat, Dialect::Anthropic, Dialect::Gemini] {
        let from = if to == Dialect::Anthropic {
            Dialect::OpenAiChat
        } else {
            Dialect::Anthropic
        };
        let mut translator = StreamTranslator::new(from, to, ctx(true));
        let first = translator.fail("connection reset");
        assert_eq!(first.len(), 1);
        assert!(first[0].data.contains("connection reset"));
        assert!(translator.failed());
        assert!(translator.fail("again").is_empty());
        assert!(
            translator.finish().is_empty(),
            "no clean end after a failure"
        );
    }
}

#[test]
fn anthropic_thinking_stream_to_openai_keeps_reasoning_signature_and_stop_sequence() {
    let input = events("anthropic_stream_thinking");
    let (out, _) = translate_stream(Dialect::Anthropic, Dialect::OpenAiChat, ctx(false), &input);
    let chunks = datas(&out);
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Let me think step by step.");
    let blocks: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("thinking_blocks"))
        .collect();
    assert_eq!(blocks.len(), 2);
    assert_eq!(
        blocks[0][0],
        json!({"type": "thinking", "thinking": "Let me think step by step.", "signature": "EqQBsig=="})
    );
    assert_eq!(
        blocks[1][0],
        json!({"type": "redacted_thinking", "data": "EmwKAhgB"})
    );
    assert_json_snapshot!(render(&out));
}

#[test]
fn openai_tool_stream_becomes_the_anthropic_event_sequence() {
    let input = events("openai_stream_tools");
    let (out, translator) =
        translate_stream(Dialect::OpenAiChat, Dialect::Anthropic, ctx(false), &input);
    let names: Vec<&str> = out.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let starts = names
        .iter()
        .filter(|n| **n == "content_block_start")
        .count();
    let stops = names.iter().filter(|n| **n == "content_block_stop").count();
    assert_eq!((starts, stops), (3, 3));
    let delta: Value = serde_json::from_str(&out[out.len() - 2].data).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["input_tokens"], 176);
    assert_eq!(translator.usage().input, 1200);
    assert_json_snapshot!(render(&out));
}

#[test]
fn openai_tool_stream_to_gemini() {
    let input = events("openai_stream_tools");
    let (out, _) = translate_stream(Dialect::OpenAiChat, Dialect::Gemini, ctx(false), &input);
    assert_json_snapshot!(render(&out));
}

#[test]
fn gemini_stream_to_openai_has_unique_call_ids_tool_calls_and_the_last_cumulative_usage() {
    let input = events("gemini_stream_tools");
    let (out, translator) =
        translate_stream(Dialect::Gemini, Dialect::OpenAiChat, ctx(true), &input);
    let chunks = datas(&out);
    let calls = tool_calls(&chunks);
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[&0].0, calls[&1].0);
    assert!(calls[&0].0[0].ends_with("__thought__U2ln"));
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    // usageMetadata is cumulative: the last snapshot, not the sum
    assert_eq!(
        translator.usage(),
        Usage {
            input: 100,
            output: 50,
            cache_read: 0,
            cache_creation: 0,
            reasoning: 30
        }
    );
    assert_json_snapshot!(render(&out));
}

#[test]
fn gemini_stream_to_anthropic() {
    let input = events("gemini_stream_tools");
    let (out, _) = translate_stream(Dialect::Gemini, Dialect::Anthropic, ctx(false), &input);
    let start: Value = serde_json::from_str(&out[0].data).unwrap();
    assert_eq!(start["message"]["usage"]["input_tokens"], 100);
    assert_json_snapshot!(render(&out));
}

#[test]
fn shortened_tool_names_are_mapped_back_in_streams() {
    let long = "mcp__github__search_repositories_and_issues_across_every_organisation";
    let translated = request(
        Dialect::OpenAiChat,
        Dialect::Gemini,
        &fixture("openai_options"),
        &opts(true),
    )
    .unwrap();
    let short = translated.body["tools"][0]["functionDeclarations"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": short, "args": {}}}]}, "finishReason": "STOP"}]});
    let input = [SseEvent::data(chunk.to_string())];
    let (out, _) = translate_stream(
        Dialect::Gemini,
        Dialect::OpenAiChat,
        ctx_with(false, translated.names),
        &input,
    );
    let calls = tool_calls(&datas(&out));
    assert_eq!(calls[&0].1, [long]);
}

#[test]
fn same_family_streams_pass_through_and_still_count_usage() {
    let input = events("anthropic_stream_text_tool_text_tool");
    let (out, translator) =
        translate_stream(Dialect::Anthropic, Dialect::Anthropic, ctx(false), &input);
    assert_eq!(out, input);
    assert_eq!(translator.usage().output, 50);
    let error = events("anthropic_stream_error");
    let (out, translator) =
        translate_stream(Dialect::Anthropic, Dialect::Anthropic, ctx(false), &error);
    assert_eq!(
        out, error,
        "the upstream's own error event reaches the client, nothing after it"
    );
    assert!(translator.failed());
}

#[test]
fn same_family_openai_streams_drop_the_usage_chunk_the_client_did_not_ask_for() {
    let input = events("openai_stream_tools");
    let (out, translator) =
        translate_stream(Dialect::OpenAiChat, Dialect::OpenAiChat, ctx(false), &input);
    assert_eq!(out.len(), input.len() - 1);
    assert!(datas(&out).iter().all(|c| c["choices"] != json!([])));
    assert_eq!(out.last().unwrap().data, "[DONE]");
    assert_eq!(translator.usage().input, 1200, "still counted for billing");
    let (out, _) = translate_stream(Dialect::OpenAiChat, Dialect::OpenAiChat, ctx(true), &input);
    assert_eq!(out, input);
}

#[test]
fn each_upstream_event_is_translated_as_it_arrives() {
    let input = events("anthropic_stream_text_tool_text_tool");
    let mut translator = StreamTranslator::new(Dialect::Anthropic, Dialect::OpenAiChat, ctx(false));
    let mut seen = Vec::new();
    for event in &input[..4] {
        seen.push(translator.push(event).unwrap());
    }
    // message_start, content_block_start and ping produce nothing; the first text delta is out
    // at once, before the upstream stream has ended.
    assert!(seen[..3].iter().all(Vec::is_empty));
    let first: Value = serde_json::from_str(&seen[3][0].data).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "Paris first.");
}

#[test]
fn a_cut_same_family_stream_gets_the_client_family_error() {
    let mut input = events("anthropic_stream_text_tool_text_tool");
    input.truncate(5);
    let (out, translator) =
        translate_stream(Dialect::Anthropic, Dialect::Anthropic, ctx(false), &input);
    assert!(translator.failed());
    assert_eq!(&out[..5], &input[..]);
    assert_eq!(out[5].event.as_deref(), Some("error"));
}
