//! `proxy_protocol` and `trusted_proxies` on a listener: what parses, and the errors that
//! name the key.

use herdgate::config::Config;
use std::path::Path;

const HEAD: &str = "[[listener]]\nname = \"lb\"\nbind = \"127.0.0.1:8080\"\n";
const TAIL: &str = "\n[[route]]\npool = \"chat\"\n\n[[pool]]\nname = \"chat\"\n\
                    [[pool.node]]\nname = \"chat-1\"\naddr = \"127.0.0.1:9001\"\n";

fn parse(listener_extra: &str) -> Result<Config, String> {
    let text = format!("{HEAD}{listener_extra}\n{TAIL}");
    Config::parse(&text, "t.toml", Path::new(".")).map_err(|e| e.to_string())
}

#[test]
fn trusted_proxies_parse_as_cidrs() {
    let c = parse("proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\", \"2001:db8::/32\"]")
        .unwrap();
    let l = &c.listeners[0];
    assert!(l.proxy_protocol);
    let shown: Vec<String> = l.trusted_proxies.iter().map(|c| c.to_string()).collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]);
    // Defaults: off, nobody trusted.
    let c = parse("").unwrap();
    assert!(!c.listeners[0].proxy_protocol);
    assert!(c.listeners[0].trusted_proxies.is_empty());
}

#[test]
fn identity_config_errors_name_the_key() {
    let e = parse("proxy_protocol = true").unwrap_err();
    assert!(e.contains("listener[0].trusted_proxies"), "{e}");
    assert!(e.contains("proxy_protocol = true needs"), "{e}");
    let e = parse("proxy_protocol = true\ntrusted_proxies = []").unwrap_err();
    assert!(e.contains("listener[0].trusted_proxies"), "{e}");
    for bad in [
        "10.0.0.0/33",
        "10.0.0/8",
        "lb.example",
        "::/129",
        "10.0.0.1/",
    ] {
        let e = parse(&format!("trusted_proxies = [\"127.0.0.1\", \"{bad}\"]")).unwrap_err();
        assert!(e.contains("listener[0].trusted_proxies[1]"), "{bad}: {e}");
        assert!(e.contains("is not a CIDR block"), "{bad}: {e}");
    }
}
