import Foundation
import XCTest
@testable import ChatTemplate

/// The typed rendering errors, each from a template that makes it: the exact case with its fields,
/// and a description that names the offending thing (no case carries a free-form sentence of its own).
final class ChatTemplateErrorCaseTests: XCTestCase {
    let messages = [ChatMessage(role: "user", content: "hi")]

    /// The error rendering `source` throws (nil, after a failure, when it renders or throws something else).
    func renderError(_ source: String, file: StaticString = #filePath, line: UInt = #line) -> ChatTemplateError? {
        do {
            let out = try ChatTemplate(source).render(messages: messages, addGenerationPrompt: true)
            XCTFail("\(source.debugDescription) rendered \(out.debugDescription), expected an error", file: file, line: line)
        } catch let e as ChatTemplateError {
            return e
        } catch {
            XCTFail("\(source.debugDescription): not a ChatTemplateError: \(error)", file: file, line: line)
        }
        return nil
    }

    /// Rendering `source` throws exactly `expected`, a rendering error whose description contains each of `names`.
    func assertThrows(_ source: String, _ expected: ChatTemplateError, naming names: [String],
                      file: StaticString = #filePath, line: UInt = #line) {
        guard let e = renderError(source, file: file, line: line) else { return }
        XCTAssertEqual(e, expected, source, file: file, line: line)
        XCTAssertTrue(e.isRuntime, "\(e)", file: file, line: line)
        XCTAssertFalse(e.description.isEmpty, source, file: file, line: line)
        XCTAssertTrue(e.description.hasPrefix("chat template error: "), e.description, file: file, line: line)
        for n in names {
            XCTAssertTrue(e.description.contains(n), "\(e.description.debugDescription) does not name \(n)", file: file, line: line)
        }
    }

    func testUndefined() {
        assertThrows("{{ missing.attr }}", .undefined(hint: "'missing' is undefined"), naming: ["'missing'"])
        assertThrows("{{ messages[0].nope() }}", .undefined(hint: "'dict object' has no attribute 'nope'"), naming: ["'nope'"])
        assertThrows("{{ messages[5].role }}", .undefined(hint: "'list object' has no element 5"), naming: ["element 5"])
        XCTAssertEqual(ChatTemplateError.undefined(hint: "'missing' is undefined").description, "chat template error: 'missing' is undefined")
    }

    func testWrongArguments() {
        assertThrows("{{ 'a'.strip('x', 'y') }}", .wrongArguments(function: "strip", reason: .tooMany(limit: 1, given: 2)),
                     naming: ["strip()", "at most 1 argument", "2 given"])
        assertThrows("{{ 'a'.strip(foo='x') }}", .wrongArguments(function: "strip", reason: .unexpectedKeyword(name: "foo")),
                     naming: ["strip()", "'foo'"])
        assertThrows("{{ 'a'.strip('x', chars='y') }}", .wrongArguments(function: "strip", reason: .multipleValues(name: "chars")),
                     naming: ["strip()", "'chars'"])
        assertThrows("{{ messages[0].get() }}", .wrongArguments(function: "get", reason: .missing(name: "key")),
                     naming: ["get()", "'key'"])
        assertThrows("{{ range() }}", .wrongArguments(function: "range", reason: .tooFew(minimum: 1, given: 0)),
                     naming: ["range()", "at least 1 argument"])
        assertThrows("{{ messages|tojson(indnt=2) }}", .wrongArguments(function: "tojson", reason: .unexpectedKeyword(name: "indnt")),
                     naming: ["tojson()", "'indnt'"])
        assertThrows("{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}",
                     .wrongArguments(function: "m", reason: .tooMany(limit: 1, given: 2)), naming: ["m()", "2 given"])
        assertThrows("{% macro m(a) %}{{ a }}{% endmacro %}{{ m(b=1) }}",
                     .wrongArguments(function: "m", reason: .unexpectedKeyword(name: "b")), naming: ["m()", "'b'"])
        assertThrows("{% for x in [1] %}{{ loop.cycle() }}{% endfor %}",
                     .wrongArguments(function: "loop.cycle", reason: .tooFew(minimum: 1, given: 0)), naming: ["loop.cycle()"])
        // The wording of Python's TypeError, as before the cases were typed.
        XCTAssertEqual(ChatTemplateError.wrongArguments(function: "strip", reason: .unexpectedKeyword(name: "foo")).description,
                       "chat template error: strip() got an unexpected keyword argument 'foo'")
        XCTAssertEqual(ChatTemplateError.wrongArguments(function: "strip", reason: .multipleValues(name: "chars")).description,
                       "chat template error: strip() got multiple values for argument 'chars'")
        XCTAssertEqual(ChatTemplateError.wrongArguments(function: "replace", reason: .tooMany(limit: 3, given: 4)).description,
                       "chat template error: replace() takes at most 3 arguments (4 given)")
    }

    func testWrongType() {
        assertThrows("{{ -'a' }}", .wrongType(operation: "unary -", expected: "a number", got: "str"), naming: ["unary -", "'str'"])
        assertThrows("{% for x in 5 %}{% endfor %}", .wrongType(operation: "iteration", expected: "an iterable", got: "int"),
                     naming: ["iterable", "'int'"])
        assertThrows("{{ 'x'(1) }}", .wrongType(operation: "call", expected: "a callable", got: "str"), naming: ["callable", "'str'"])
        assertThrows("{{ 'a b'.split(1) }}", .wrongType(operation: "split(sep)", expected: "str", got: "int"), naming: ["split(sep)", "'int'"])
        assertThrows("{{ 'a b'.split(' ', 'x') }}", .wrongType(operation: "split(maxsplit)", expected: "an integer", got: "str"),
                     naming: ["split(maxsplit)"])
        assertThrows("{{ {(1, 2): 'v'}|tojson }}",
                     .wrongType(operation: "tojson key", expected: "str, int, float, bool or None", got: "tuple"),
                     naming: ["tojson key", "'tuple'"])
        assertThrows("{{ namespace()|tojson }}", .wrongType(operation: "tojson", expected: "a JSON serializable value", got: "Namespace"),
                     naming: ["tojson", "'Namespace'"])
        assertThrows("{{ {messages: 1} }}", .wrongType(operation: "dict key", expected: "a hashable value", got: "list"), naming: ["'list'"])
        assertThrows("{% set x.y = 1 %}", .wrongType(operation: "set x.y", expected: "a namespace", got: "Undefined"), naming: ["set x.y"])
        assertThrows("{{ 3 is divisibleby('a') }}", .wrongType(operation: "divisibleby(num)", expected: "an integer", got: "str"),
                     naming: ["divisibleby(num)", "'str'"])
        assertThrows("{{ 1 in 2 }}", .wrongType(operation: "'in'", expected: "an iterable right operand", got: "int"), naming: ["'in'", "'int'"])
        XCTAssertEqual(ChatTemplateError.wrongType(operation: "unary -", expected: "a number", got: "str").description,
                       "chat template error: unary -: expected a number, got 'str'")
    }

    func testInvalidValue() {
        assertThrows("{{ 'a b'.split('') }}", .invalidValue(operation: "split", reason: "empty separator"), naming: ["split", "empty separator"])
        assertThrows("{{ 'a b'.rsplit('', 1) }}", .invalidValue(operation: "rsplit", reason: "empty separator"), naming: ["rsplit"])
        assertThrows("{{ 'abc'.index('z') }}", .invalidValue(operation: "index", reason: "substring not found"), naming: ["index"])
        assertThrows("{{ [1, 2].index(3) }}", .invalidValue(operation: "index", reason: "3 is not in list"), naming: ["3 is not in list"])
        assertThrows("{{ [1, 2][::0] }}", .invalidValue(operation: "slice", reason: "step cannot be zero"), naming: ["slice", "step"])
        assertThrows("{% set a, b = [1] %}", .invalidValue(operation: "unpacking", reason: "not enough values (expected 2, got 1)"),
                     naming: ["unpacking", "expected 2, got 1"])
        assertThrows("{{ '%s %s' % (1,) }}", .invalidValue(operation: "%", reason: "not enough arguments for format string"),
                     naming: ["format string"])
        assertThrows("{{ range(1, 5, 0) }}", .invalidValue(operation: "range", reason: "arg 3 (step) must not be zero"), naming: ["range"])
        assertThrows("{{ [1, 2, 3]|batch(0) }}", .invalidValue(operation: "batch(linecount)", reason: "must be positive, not 0"),
                     naming: ["batch(linecount)", "not 0"])
        XCTAssertEqual(ChatTemplateError.invalidValue(operation: "split", reason: "empty separator").description,
                       "chat template error: split: empty separator")
    }

    func testUnsafeAccess() {
        assertThrows("{{ messages.append(1) }}", .unsafeAccess(attribute: "append", type: "list"), naming: ["'append'", "'list'", "unsafe"])
        XCTAssertEqual(ChatTemplateError.unsafeAccess(attribute: "append", type: "list").description,
                       "chat template error: access to attribute 'append' of 'list' object is unsafe (immutable sandbox)")
    }

    func testUnsupportedFilter() {
        assertThrows("{{ 'abc'|truncate(2) }}", .unsupportedFilter(name: "truncate"), naming: ["'truncate'", "not supported"])
    }
}
