import Foundation
import XCTest
@testable import ChatTemplate

/// Bad templates give typed errors with a position, never a crash or a hang.
final class ChatTemplateErrorTests: XCTestCase {
    func syntaxError(_ source: String, file: StaticString = #filePath, line: UInt = #line) -> (Int, Int, String)? {
        do {
            _ = try ChatTemplate(source)
            XCTFail("expected a syntax error for \(source.prefix(80).debugDescription)", file: file, line: line)
        } catch ChatTemplateError.syntax(let l, let c, let m) {
            XCTAssertGreaterThanOrEqual(l, 1, file: file, line: line)
            XCTAssertGreaterThanOrEqual(c, 1, file: file, line: line)
            XCTAssertFalse(m.isEmpty, file: file, line: line)
            return (l, c, m)
        } catch {
            XCTFail("expected a syntax error, got \(error)", file: file, line: line)
        }
        return nil
    }

    func testUnclosedTags() {
        XCTAssertEqual(syntaxError("hello {{ name ")?.0, 1)
        let e = syntaxError("line one\n  {% if x %}\nbody")
        XCTAssertEqual(e?.0, 2)
        XCTAssertEqual(e?.1, 3)
        XCTAssertTrue(e?.2.contains("endif") ?? false, e?.2 ?? "")
        XCTAssertNotNil(syntaxError("{% for m in messages %}{{ m }}"))
        XCTAssertNotNil(syntaxError("{# never closed"))
        XCTAssertNotNil(syntaxError("{% if a %}{% endfor %}"))
        XCTAssertNotNil(syntaxError("{% endif %}"))
        XCTAssertNotNil(syntaxError("{% raw %} no end"))
        XCTAssertNotNil(syntaxError("{{ 'unterminated }}"))
    }

    func testUnknownFilterAndTest() {
        let e = syntaxError("ab\n{{ x | nosuchfilter }}")
        XCTAssertEqual(e?.0, 2)
        XCTAssertEqual(e?.1, 8)
        XCTAssertTrue(e?.2.contains("nosuchfilter") ?? false)
        XCTAssertTrue(syntaxError("{{ x is nosuchtest }}")?.2.contains("nosuchtest") ?? false)
        XCTAssertNotNil(syntaxError("{% include 'other.jinja' %}"))
        XCTAssertNotNil(syntaxError("{% frobnicate %}"))
    }

    func testBadExpressions() {
        for s in ["{{ }}", "{{ 1 + }}", "{{ (1 }}", "{{ [1, 2 }}", "{{ a.}}", "{{ 1 2 }}", "{% set = 1 %}", "{% for in x %}{% endfor %}",
                  "{% if %}{% endif %}", "{{ a | }}", "{{ f(a=1, 2) }}", "{{ @ }}", "{{ {1: } }}", "{% macro m(a=1, b) %}{% endmacro %}",
                  "{{ ) }}", "{{ a[] }}"] {
            XCTAssertNotNil(syntaxError(s), s)
        }
    }

    func testDeepNestingIsAnErrorNotACrash() {
        XCTAssertNotNil(syntaxError("{{ " + String(repeating: "(", count: 10_000) + "1" + String(repeating: ")", count: 10_000) + " }}"))
        XCTAssertNotNil(syntaxError("{{ " + String(repeating: "(", count: 100_000) + " }}"))
        XCTAssertNotNil(syntaxError("{{ " + String(repeating: "[", count: 5_000) + String(repeating: "]", count: 5_000) + " }}"))
        XCTAssertNotNil(syntaxError(String(repeating: "{% if x %}", count: 10_000) + String(repeating: "{% endif %}", count: 10_000)))
        XCTAssertNotNil(syntaxError("{{ " + String(repeating: "not ", count: 10_000) + "x }}"))
        XCTAssertNotNil(syntaxError("{{ " + String(repeating: "-", count: 10_000) + "x }}"))
        XCTAssertNotNil(syntaxError("{{ x" + String(repeating: ".a", count: 10_000) + " }}"))
        XCTAssertNotNil(syntaxError("{{ x" + String(repeating: "|trim", count: 10_000) + " }}"))
        // Moderate nesting still works.
        XCTAssertEqual(try ChatTemplate("{{ " + String(repeating: "(", count: 30) + "1" + String(repeating: ")", count: 30) + " }}")
            .render(messages: [], addGenerationPrompt: false), "1")
        XCTAssertEqual(try ChatTemplate(String(repeating: "{% if true %}", count: 50) + "y" + String(repeating: "{% endif %}", count: 50))
            .render(messages: [], addGenerationPrompt: false), "y")
    }

    func testManyUnclosedBlockOpeners() {
        let start = Date()
        XCTAssertNotNil(syntaxError(String(repeating: "{%", count: 10_000)))
        XCTAssertNotNil(syntaxError(String(repeating: "{{", count: 10_000)))
        XCTAssertNotNil(syntaxError(String(repeating: "{#", count: 10_000)))
        XCTAssertNotNil(syntaxError(String(repeating: "{% if x %}", count: 10_000)))
        XCTAssertLessThan(Date().timeIntervalSince(start), 20)
    }

    func testRuntimeErrors() throws {
        let m = [ChatMessage(role: "user", content: "hi")]
        XCTAssertThrowsError(try ChatTemplate("{{ raise_exception('bad ' ~ messages|length) }}").render(messages: m, addGenerationPrompt: true)) {
            XCTAssertEqual($0 as? ChatTemplateError, .raised("bad 1"))
        }
        for s in ["{{ nope.attr }}", "{{ 1 + 'a' }}", "{{ messages[3].role }}", "{{ 1 / 0 }}", "{{ range(10000000)|length }}",
                  "{{ none() }}", "{% set a, b = [1] %}", "{% set x.y = 1 %}",
                  "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{{ 9223372036854775807 + 1 }}"] {
            XCTAssertThrowsError(try ChatTemplate(s).render(messages: m, addGenerationPrompt: true), s) { e in
                guard (e as? ChatTemplateError)?.isRuntime == true else { return XCTFail("\(s): \(e)") }
            }
        }
        // The typed cases, field by field.
        let typed: [(String, ChatTemplateError)] = [
            ("{{ 1 / 0 }}", .divisionByZero(operator: "/")),
            ("{{ 7 // 0 }}", .divisionByZero(operator: "//")),
            ("{{ 2.5 % 0 }}", .divisionByZero(operator: "%")),
            ("{{ 9223372036854775807 + 1 }}", .integerOverflow(operator: "+")),
            ("{{ 1 + 'a' }}", .unsupportedOperands(operator: "+", left: "int", right: "str")),
            ("{{ range(10000000)|length }}", .rangeTooLarge(count: 10_000_000, limit: 100_000)),
            ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", .nestingTooDeep(what: "macro calls", limit: 64)),
            ("{{ [1]|map('no_such_filter')|list }}", .unknownFilter(name: "no_such_filter")),
            ("{{ [1]|select('no_such_test')|list }}", .unknownTest(name: "no_such_test")),
        ]
        for (s, want) in typed {
            XCTAssertThrowsError(try ChatTemplate(s).render(messages: m, addGenerationPrompt: true), s) { e in
                XCTAssertEqual(e as? ChatTemplateError, want, s)
                XCTAssertEqual((e as? ChatTemplateError)?.isRuntime, true, s)
            }
        }
        XCTAssertEqual("\(ChatTemplateError.rangeTooLarge(count: 10_000_000, limit: 100_000))",
                       "chat template error: range of 10000000 items too big (the sandbox blocks ranges larger than MAX_RANGE (100000))")
    }

    func testDescriptionAndAPI() throws {
        XCTAssertTrue(ChatTemplateError.syntax(line: 3, column: 4, message: "boom").description.contains("line 3, column 4"))
        let t = try ChatTemplate("{{ greeting }} {{ items|tojson }} {{ cfg.k }}{{ add_generation_prompt }}")
        let out = try t.render(messages: [], addGenerationPrompt: false,
                               extra: ["greeting": "hey", "items": [1, 2.5, "x", nil, true], "cfg": ["k": "v"]])
        XCTAssertEqual(out, "hey [1, 2.5, \"x\", null, true] vFalse")
        XCTAssertEqual(try ChatTemplate("{{ tools is none }}{{ documents is defined }}").render(messages: [], addGenerationPrompt: true), "TrueTrue")
        let d = try XCTUnwrap(Calendar(identifier: .gregorian).date(from: DateComponents(timeZone: .current, year: 2024, month: 7, day: 4)))
        XCTAssertEqual(try ChatTemplate("{{ strftime_now('%d %b %Y') }}").render(messages: [], addGenerationPrompt: true, now: d), "04 Jul 2024")
        let data = try JSONEncoder().encode(ChatMessage(role: "user", content: "x"))
        XCTAssertEqual(try JSONDecoder().decode(ChatMessage.self, from: data), ChatMessage(role: "user", content: "x"))
    }
}
