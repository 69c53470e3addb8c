import Foundation
import XCTest
@testable import ChatTemplate

/// Every case rendered by Python's jinja2 (Tools/make_chat_fixtures.py) must come out byte for byte.
final class ChatTemplateFixtureTests: XCTestCase {
    struct Fixture: Decodable {
        struct Failure: Decodable { var kind: String; var message: String }
        var name: String
        var template: String?
        var template_file: String?
        var messages: [ChatMessage]
        var add_generation_prompt: Bool
        var bos_token: String
        var eos_token: String
        var extra: [String: JinjaValue]
        var expected: String?
        var error: Failure?
    }
    struct File: Decodable { var cases: [Fixture] }

    static var fixturesURL: URL { Bundle.module.resourceURL!.appendingPathComponent("Fixtures") }

    /// 2026-01-15 10:30:00 local time, as the generator pins `datetime.now()`.
    static var pinnedDate: Date {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone.current
        return cal.date(from: DateComponents(year: 2026, month: 1, day: 15, hour: 10, minute: 30, second: 0))!
    }

    /// Floats in fixtures' `extra` are written {"__float__": "2.0"} (a JSON decoder reads 2.0 as an Int).
    static func untag(_ v: JinjaValue) -> JinjaValue {
        switch v {
        case .dict(let d):
            if d.count == 1, d[0].0 == "__float__", case .string(let s) = d[0].1 { return .double(Double(s)!) }
            return .dict(d.map { ($0.0, untag($0.1)) })
        case .list(let l): return .list(l.map(untag))
        default: return v
        }
    }

    func loadCases() throws -> [Fixture] {
        let data = try Data(contentsOf: Self.fixturesURL.appendingPathComponent("cases.json"))
        return try JSONDecoder().decode(File.self, from: data).cases
    }

    func testAllFixtures() throws {
        let cases = try loadCases()
        XCTAssertGreaterThanOrEqual(cases.count, 60)
        var passed = 0
        var failures: [String] = []
        for c in cases {
            let source: String
            if let f = c.template_file {
                source = try String(contentsOf: Self.fixturesURL.appendingPathComponent(f), encoding: .utf8)
            } else {
                source = c.template!
            }
            do {
                let t = try ChatTemplate(source)
                let out = try t.render(messages: c.messages, addGenerationPrompt: c.add_generation_prompt,
                                       bosToken: c.bos_token, eosToken: c.eos_token, extra: c.extra.mapValues(Self.untag), now: Self.pinnedDate)
                if let e = c.error {
                    failures.append("\(c.name): expected \(e.kind) error \(e.message), got output \(out.debugDescription)")
                } else if out != c.expected! {
                    failures.append("\(c.name):\n  expected \(c.expected!.debugDescription)\n  got      \(out.debugDescription)")
                } else {
                    passed += 1
                }
            } catch let err as ChatTemplateError {
                switch (err, c.error?.kind) {
                case (.raised(let m), "raised") where m == c.error!.message: passed += 1
                case (let e, "runtime") where e.isRuntime: passed += 1
                default: failures.append("\(c.name): unexpected \(err) (expected \(c.error.map { "\($0.kind): \($0.message)" } ?? "output"))")
                }
            }
        }
        print("ChatTemplate fixtures: \(passed)/\(cases.count) pass")
        XCTAssertTrue(failures.isEmpty, "\(failures.count) fixture(s) differ:\n" + failures.joined(separator: "\n"))
    }

    func testSmolLM2TemplateIsTheRealOne() throws {
        let s = try String(contentsOf: Self.fixturesURL.appendingPathComponent("smollm2.jinja"), encoding: .utf8)
        XCTAssertTrue(s.contains("You are a helpful AI assistant named SmolLM, trained by Hugging Face"))
        let t = try ChatTemplate(s)
        XCTAssertEqual(t.source, s)
        let out = try t.render(messages: [ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
        XCTAssertEqual(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }
}
