use super::*;

fn parse(value: Value) -> Result<GenerateRequest, RunnerError> {
    GenerateRequest::parse(value.as_object().unwrap(), 256, Some(7))
}

#[test]
fn requests_are_checked_with_the_numbers() {
    let ok =
        parse(json!({"prompt": "hi", "max_tokens": 5, "temperature": 0, "stop": ["\n"]})).unwrap();
    assert_eq!(
        (ok.max_tokens, ok.seed, ok.stop.clone()),
        (5, 7, vec!["\n".to_owned()])
    );
    let cases = [
        (json!({}), "missing \"prompt\""),
        (json!({"prompt": ""}), "\"prompt\" is empty"),
        (json!({"prompt": 3}), "\"prompt\" must be a string"),
        (json!({"prompt": "a", "messages": []}), "not both"),
        (json!({"messages": []}), "\"messages\" is empty"),
        (json!({"messages": [{"role": "user"}]}), "message 0 must be"),
        (json!({"prompt": "a", "max_tokens": 0}), "at least 1"),
        (
            json!({"prompt": "a", "max_tokens": 300}),
            "300 is more than the context of 256 tokens",
        ),
        (
            json!({"prompt": "a", "temperature": -1}),
            "\"temperature\" must be 0",
        ),
        (
            json!({"prompt": "a", "top_p": 0}),
            "\"top_p\" must be in (0, 1]",
        ),
        (json!({"prompt": "a", "stop": [""]}), "non-empty strings"),
        (
            json!({"prompt": "a", "stream": "yes"}),
            "\"stream\" must be true or false",
        ),
    ];
    for (value, expected) in cases {
        let error = parse(value.clone()).unwrap_err().to_string();
        assert!(error.contains(expected), "{value}: {error}");
    }
}

#[test]
fn streamed_text_never_shows_what_a_stop_sequence_cuts() {
    let stops = vec!["END".to_owned()];
    let mut sent = Vec::new();
    let mut sink = |v: Value| sent.push(v["text"].as_str().unwrap().to_owned());
    let mut text = TextStream::new(&stops, true);
    text.last_sent -= STREAM_EVERY;
    assert!(!text.push(b"hello E", &mut sink));
    assert_eq!(text.sent, 6, "\"E\" may start \"END\" and is held back");
    text.last_sent -= STREAM_EVERY;
    assert!(text.push(b"ND more", &mut sink));
    let final_text = text.finish(&mut sink);
    assert_eq!(final_text, "hello ");
    assert_eq!(sent.concat(), final_text);
}

#[test]
fn a_character_split_across_tokens_is_not_sent_half() {
    let sent = std::cell::RefCell::new(Vec::new());
    let mut sink = |v: Value| {
        sent.borrow_mut()
            .push(v["text"].as_str().unwrap().to_owned())
    };
    let mut text = TextStream::new(&[], true);
    let euro = "€".as_bytes();
    text.last_sent -= STREAM_EVERY;
    text.push(&euro[..1], &mut sink);
    assert!(sent.borrow().is_empty());
    text.push(&euro[1..], &mut sink);
    assert_eq!(text.finish(&mut sink), "€");
    assert_eq!(sent.borrow().concat(), "€");
}

#[test]
fn bytes_that_are_not_utf8_do_not_stall_the_stream() {
    let stops = vec!["!".to_owned()];
    let sent = std::cell::RefCell::new(Vec::new());
    let mut sink = |v: Value| {
        sent.borrow_mut()
            .push(v["text"].as_str().unwrap().to_owned())
    };
    let mut text = TextStream::new(&stops, true);
    text.last_sent -= STREAM_EVERY;
    assert!(!text.push(b"a\xffb", &mut sink));
    assert_eq!(sent.borrow().concat(), "a\u{fffd}b");
    assert!(
        text.push(b"c!d", &mut sink),
        "a stop after bad bytes is still seen"
    );
    assert_eq!(text.finish(&mut sink), "a\u{fffd}bc");
    assert_eq!(sent.borrow().concat(), "a\u{fffd}bc");
}
