//! Request goldens: OpenAI, Anthropic and Gemini requests into the other two families.

use insta::assert_json_snapshot;
use serde_json::{Value, json};

use super::{fixture, opts};
use crate::translate::{Dialect, RequestOptions, request};

fn to(from: Dialect, to: Dialect, name: &str) -> Value {
    request(from, to, &fixture(name), &opts(false))
        .expect("translatable")
        .body
}

#[test]
fn openai_tool_history_to_anthropic_has_one_user_turn_per_batch_of_results_and_no_empty_text() {
    let body = to(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        "openai_tool_history",
    );
    let messages = body["messages"].as_array().unwrap();
    // user, assistant(2 calls), user(2 results), assistant(2 calls), user(2 results + text)
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
    let results = messages[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|b| b["type"] == "tool_result"));
    let last = messages[4]["content"].as_array().unwrap();
    assert_eq!(last[0]["type"], "tool_result");
    assert_eq!(last[1]["type"], "tool_result");
    assert_eq!(last[2]["type"], "text");
    // content "" / null beside tool calls: no text block at all (Anthropic refuses empty ones)
    for turn in [&messages[1], &messages[3]] {
        assert!(
            turn["content"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"] == "tool_use")
        );
    }
    // "" arguments -> {}; malformed arguments kept, not dropped
    assert_eq!(messages[3]["content"][0]["input"], json!({}));
    assert_eq!(
        messages[3]["content"][1]["input"]["__raw_arguments"],
        "{\"city\": \"Os"
    );
    assert_json_snapshot!(body);
}

#[test]
fn openai_tool_history_to_gemini_has_one_function_call_turn_and_one_function_response_turn() {
    let body = to(Dialect::OpenAiChat, Dialect::Gemini, "openai_tool_history");
    let contents = body["contents"].as_array().unwrap();
    let roles: Vec<&str> = contents
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "model", "user", "model", "user"]);
    let responses = contents[2]["parts"].as_array().unwrap();
    assert_eq!(responses.len(), 2);
    assert!(
        responses
            .iter()
            .all(|p| p["functionResponse"]["name"] == "get_weather")
    );
    assert_eq!(contents[3]["parts"][0]["functionCall"]["args"], json!({}));
    // get_time has no parameters: Gemini gets a declaration without a schema
    assert!(
        body["tools"][0]["functionDeclarations"][1]
            .get("parameters")
            .is_none()
    );
    assert_json_snapshot!(body);
}

#[test]
fn several_system_messages_and_one_mid_conversation_fold_into_anthropic_system() {
    let body = to(Dialect::OpenAiChat, Dialect::Anthropic, "openai_system");
    let system = body["system"].as_array().unwrap();
    assert_eq!(system.len(), 3);
    assert_eq!(system[1]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!(system[2]["text"], "From now on answer in French.");
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_json_snapshot!(body);
}

#[test]
fn several_system_messages_and_one_mid_conversation_fold_into_gemini_system_instruction() {
    let body = to(Dialect::OpenAiChat, Dialect::Gemini, "openai_system");
    assert_eq!(
        body["systemInstruction"]["parts"].as_array().unwrap().len(),
        3
    );
    assert_eq!(body["contents"].as_array().unwrap().len(), 3);
    assert_json_snapshot!(body);
}

#[test]
fn openai_images_and_files_become_anthropic_base64_url_and_document_sources() {
    let body = to(Dialect::OpenAiChat, Dialect::Anthropic, "openai_content");
    assert_eq!(body["max_tokens"], 100);
    assert_json_snapshot!(body);
}

#[test]
fn openai_images_become_gemini_inline_and_file_data() {
    let body = to(
        Dialect::OpenAiChat,
        Dialect::Gemini,
        "openai_gemini_content",
    );
    assert_json_snapshot!(body);
}

#[test]
fn https_image_urls_are_refused_for_gemini() {
    let err = request(
        Dialect::OpenAiChat,
        Dialect::Gemini,
        &fixture("openai_content"),
        &opts(false),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.0.contains("gs://"), "{err}");
}

#[test]
fn openai_options_tools_and_tool_choice_map_to_anthropic() {
    let translated = request(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        &fixture("openai_options"),
        &opts(true),
    )
    .unwrap();
    let body = &translated.body;
    let short = body["tools"][0]["name"].as_str().unwrap();
    assert!(short.len() <= 64, "{short}");
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": short, "disable_parallel_tool_use": true})
    );
    assert_eq!(
        translated.names.to_client(short),
        "mcp__github__search_repositories_and_issues_across_every_organisation"
    );
    // a forced tool choice and thinking cannot go together: the tool choice wins
    assert!(body.get("thinking").is_none());
    assert_json_snapshot!(body);
}

#[test]
fn reasoning_effort_becomes_an_anthropic_thinking_budget_below_max_tokens() {
    let mut body = fixture("openai_options");
    body["tool_choice"] = json!("auto");
    let out = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &opts(false))
        .unwrap()
        .body;
    assert_eq!(
        out["thinking"],
        json!({"type": "enabled", "budget_tokens": 1999})
    );
    assert!(
        out.get("temperature").is_none() && out.get("top_p").is_none(),
        "thinking refuses them"
    );
    body["max_tokens"] = json!(1000);
    let small = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &opts(false))
        .unwrap()
        .body;
    assert!(
        small.get("thinking").is_none(),
        "no budget of at least 1024 fits under 1000"
    );
    assert_eq!(small["temperature"], 0.7);
}

#[test]
fn openai_options_tools_and_tool_choice_map_to_gemini_with_clean_schemas() {
    let translated = request(
        Dialect::OpenAiChat,
        Dialect::Gemini,
        &fixture("openai_options"),
        &opts(true),
    )
    .unwrap();
    let body = &translated.body;
    let text = body.to_string();
    assert!(
        !text.contains("$ref")
            && !text.contains("additionalProperties")
            && !text.contains("$schema")
    );
    assert!(body.get("model").is_none());
    assert_json_snapshot!(body);
}

#[test]
fn tool_choice_required_and_none_map_to_any_and_none() {
    let mut body = fixture("openai_options");
    for (choice, anthropic, gemini) in [
        ("required", "any", "ANY"),
        ("none", "none", "NONE"),
        ("auto", "auto", "AUTO"),
    ] {
        body["tool_choice"] = json!(choice);
        body["parallel_tool_calls"] = json!(true);
        let a = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &opts(false))
            .unwrap()
            .body;
        assert_eq!(a["tool_choice"], json!({"type": anthropic}));
        let g = request(Dialect::OpenAiChat, Dialect::Gemini, &body, &opts(false))
            .unwrap()
            .body;
        assert_eq!(g["toolConfig"]["functionCallingConfig"]["mode"], gemini);
    }
}

#[test]
fn max_tokens_default_and_enforced_cap_reach_anthropic() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let plain = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &opts(false))
        .unwrap()
        .body;
    assert_eq!(plain["max_tokens"], 4096);
    let capped = RequestOptions {
        max_tokens: Some(77),
        ..opts(false)
    };
    let body =
        json!({"model": "m", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]});
    let held = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &capped)
        .unwrap()
        .body;
    assert_eq!(held["max_tokens"], 77);
    let gemini = request(Dialect::OpenAiChat, Dialect::Gemini, &body, &capped)
        .unwrap()
        .body;
    assert_eq!(gemini["generationConfig"]["maxOutputTokens"], 77);
}

#[test]
fn anthropic_request_to_openai_has_parallel_results_as_tool_messages_and_no_hub_only_fields() {
    let translated = request(
        Dialect::Anthropic,
        Dialect::OpenAiChat,
        &fixture("anthropic_request"),
        &opts(true),
    )
    .unwrap();
    let body = &translated.body;
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "tool", "user"]
    );
    // hub-only fields never reach an OpenAI upstream
    let text = body.to_string();
    for hub_only in [
        "thinking_blocks",
        "is_error",
        "top_k",
        "reasoning_effort",
        "cache_control",
    ] {
        assert!(!text.contains(hub_only), "{hub_only}");
    }
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_json_snapshot!(body);
}

#[test]
fn anthropic_request_to_gemini_goes_through_the_hub() {
    let body = to(Dialect::Anthropic, Dialect::Gemini, "anthropic_request");
    let contents = body["contents"].as_array().unwrap();
    let roles: Vec<&str> = contents
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "model", "user"]);
    assert_eq!(
        contents[2]["parts"][1]["functionResponse"]["response"],
        json!({"error": {"content": "city missing"}})
    );
    assert_json_snapshot!(body);
}

#[test]
fn gemini_request_to_openai_invents_matching_tool_call_ids() {
    let body = to(Dialect::Gemini, Dialect::OpenAiChat, "gemini_request");
    let messages = body["messages"].as_array().unwrap();
    let calls = messages[2]["tool_calls"].as_array().unwrap();
    assert_eq!(messages[3]["tool_call_id"], calls[0]["id"]);
    assert_eq!(messages[4]["tool_call_id"], calls[1]["id"]);
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert_json_snapshot!(body);
}

#[test]
fn gemini_request_to_anthropic_goes_through_the_hub() {
    let body = to(Dialect::Gemini, Dialect::Anthropic, "gemini_request");
    let turns = body["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[2]["content"][0]["type"], "tool_result");
    assert_eq!(turns[2]["content"][1]["type"], "tool_result");
    assert_eq!(turns[2]["content"][2]["type"], "text");
    assert_json_snapshot!(body);
}

#[test]
fn a_thought_signature_in_a_tool_call_id_goes_back_to_gemini_and_is_stripped_from_the_id() {
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_req1_1__thought__U2ln", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_req1_1__thought__U2ln", "content": "sunny"}
    ]});
    let out = request(Dialect::OpenAiChat, Dialect::Gemini, &body, &opts(false))
        .unwrap()
        .body;
    let call = &out["contents"][1]["parts"][0];
    assert_eq!(call["thoughtSignature"], "U2ln");
    assert!(!out.to_string().contains("__thought__"));
    assert_eq!(
        out["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"content": "sunny"}})
    );
}

#[test]
fn openai_to_anthropic_to_openai_keeps_the_messages() {
    let original = fixture("openai_tool_history");
    let anthropic = request(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        &original,
        &opts(false),
    )
    .unwrap()
    .body;
    let back = request(
        Dialect::Anthropic,
        Dialect::OpenAiChat,
        &anthropic,
        &opts(false),
    )
    .unwrap()
    .body;
    let mut expected = original["messages"].as_array().unwrap().clone();
    // An OpenAI "" beside tool calls comes back as null, "" arguments as "{}" and the tool's
    // one text part as a plain string.
    expected[4]["content"] = Value::Null;
    expected[4]["tool_calls"][0]["function"]["arguments"] = json!("{}");
    expected[5]["content"] = json!("14:05");
    assert_eq!(back["messages"].as_array().unwrap(), &expected);
}

#[test]
fn anthropic_thinking_blocks_survive_a_round_trip_through_openai_byte_identical() {
    let original = fixture("anthropic_request");
    let hub = crate::translate::anthropic::request_to_hub(&original, &opts(false)).unwrap();
    let mut names = crate::translate::ToolNames::default();
    let back =
        crate::translate::anthropic::request_from_hub(&hub, &opts(false), &mut names).unwrap();
    let before = &original["messages"][1]["content"];
    let after = &back["messages"][1]["content"];
    assert_eq!(before.to_string(), after.to_string());
    assert_eq!(original["system"], back["system"]);
}

#[test]
fn openai_temperatures_above_one_are_clamped_for_anthropic() {
    let body =
        json!({"model": "m", "temperature": 1.6, "messages": [{"role": "user", "content": "hi"}]});
    let out = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &opts(false))
        .unwrap()
        .body;
    assert_eq!(out["temperature"], 1.0);
}

#[test]
fn images_inside_anthropic_tool_results_follow_the_tool_message_as_user_content() {
    let body = json!({"model": "c", "max_tokens": 10, "messages": [
        {"role": "user", "content": "shot?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "captured"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
        ]}]}
    ]});
    let out = request(Dialect::Anthropic, Dialect::OpenAiChat, &body, &opts(false))
        .unwrap()
        .body;
    let messages = out["messages"].as_array().unwrap();
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "t1", "content": "captured"})
    );
    assert_eq!(
        messages[3],
        json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]})
    );
}

#[test]
fn server_tools_and_unsupported_parts_are_refused_with_a_clear_error() {
    let body = json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    let err = request(Dialect::Anthropic, Dialect::OpenAiChat, &body, &opts(false))
        .map(|_| ())
        .unwrap_err();
    assert!(err.0.contains("web_search_20250305"), "{err}");
    let audio = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]});
    assert!(
        request(
            Dialect::OpenAiChat,
            Dialect::Anthropic,
            &audio,
            &opts(false)
        )
        .is_err()
    );
    let several = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]});
    assert!(
        request(
            Dialect::OpenAiChat,
            Dialect::Anthropic,
            &several,
            &opts(false)
        )
        .is_err()
    );
}

#[test]
fn thinking_stays_off_when_the_last_tool_turn_has_no_thinking_block_to_replay() {
    let mut body = fixture("openai_tool_history");
    body["reasoning_effort"] = json!("low");
    body["max_tokens"] = json!(4000);
    let out = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &opts(false))
        .unwrap()
        .body;
    assert!(
        out.get("thinking").is_none(),
        "Anthropic would refuse the unsigned tool turn"
    );
    // the same history with the thinking block echoed back keeps thinking on
    let block = json!({"type": "thinking", "thinking": "t", "signature": "sig"});
    body["messages"][4]["thinking_blocks"] = json!([block]);
    let out = request(Dialect::OpenAiChat, Dialect::Anthropic, &body, &opts(false))
        .unwrap()
        .body;
    assert_eq!(
        out["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert_eq!(out["messages"][3]["content"][0], block);
}
