import Foundation

/// A value passed into a template (`extra` variables) — the JSON-like data jinja2 sees as Python objects.
public enum JinjaValue: Sendable, Equatable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    /// An ordered dictionary (Python dicts keep insertion order); keys are strings.
    case dict([(String, JinjaValue)])

    public static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.none, .none): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.double(let x), .double(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.list(let x), .list(let y)): return x == y
        case (.dict(let x), .dict(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }
}

extension JinjaValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(nilLiteral: ()) { self = .none }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JinjaValue...) { self = .list(elements) }
    public init(dictionaryLiteral elements: (String, JinjaValue)...) { self = .dict(elements) }
}

extension JinjaValue: Decodable {
    /// Decodes JSON. Object keys come out sorted (a decoder does not keep their order).
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .none }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let l = try? c.decode([JinjaValue].self) { self = .list(l) }
        else {
            let d = try c.decode([String: JinjaValue].self)
            self = .dict(d.keys.sorted().map { ($0, d[$0]!) })
        }
    }
}

public enum ChatTemplateError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What is wrong with the arguments of a call (of a function, method, filter, test or macro).
    public enum ArgumentProblem: Sendable, Equatable {
        /// More positional arguments (`given`) than the `limit` the callee takes.
        case tooMany(limit: Int, given: Int)
        /// Fewer positional arguments (`given`) than the `minimum` the callee needs.
        case tooFew(minimum: Int, given: Int)
        /// A keyword argument named `name` that the callee has no parameter for.
        case unexpectedKeyword(name: String)
        /// The parameter `name` given both by position and by keyword.
        case multipleValues(name: String)
        /// The required parameter `name` not given.
        case missing(name: String)
    }

    /// The template does not parse (line and column are 1-based, in the newline-normalised source);
    /// `message` is the parser's (what it expected there).
    case syntax(line: Int, column: Int, message: String)
    /// The template called `raise_exception(message)`: `message` is the template's own text.
    case raised(String)
    /// `operator` (`/`, `//`, `%`, `divisibleby`) with a zero divisor.
    case divisionByZero(operator: String)
    /// Integer `operator` (`+`, `-`, `*`, `//`, `**`, unary `-`) overflowed 64 bits.
    case integerOverflow(operator: String)
    /// `operator` is not defined for operands of the types `left` and `right` (Python's type names).
    case unsupportedOperands(operator: String, left: String, right: String)
    /// `range()` of `count` items, beyond the sandbox's `limit` (Jinja's MAX_RANGE).
    case rangeTooLarge(count: Int, limit: Int)
    /// `what` (macro calls, `tojson` values) nested more than `limit` deep.
    case nestingTooDeep(what: String, limit: Int)
    /// The rendered output (or a string repetition) would exceed `limit` bytes.
    case outputTooLarge(limit: Int)
    /// No filter named `name`.
    case unknownFilter(name: String)
    /// No test named `name`.
    case unknownTest(name: String)
    /// The filter `name` is one jinja2 has (`striptags`, `truncate`, `format`) but this interpreter does not.
    case unsupportedFilter(name: String)
    /// An undefined value was used (called, printed in arithmetic, its attribute or item taken, …):
    /// `hint` is Jinja's `UndefinedError` text for it, naming what is undefined (`'x' is undefined`,
    /// `'dict object' has no attribute 'k'`, `'list object' has no element 5`, …).
    case undefined(hint: String)
    /// The call of `function` (a Python or jinja2 name: `strip`, `tojson`, `range`, a macro's name,
    /// `loop.cycle`) has the wrong arguments.
    case wrongArguments(function: String, reason: ArgumentProblem)
    /// `operation` (what was being done, or which argument, written `function(parameter)`:
    /// `iteration`, `call`, `unary -`, `tojson key`, `split(maxsplit)`, …) needs `expected` but was
    /// given a value of type `got` (Python's type name: `int`, `str`, `NoneType`, `Undefined`, …).
    case wrongType(operation: String, expected: String, got: String)
    /// `operation` (`split`, `index`, `range`, `slice`, `%`, `batch`, …) was given a value of the right
    /// type that it cannot use; `reason` says which and why (`empty separator`, `step cannot be zero`, …).
    case invalidValue(operation: String, reason: String)
    /// The sandbox refuses the attribute `attribute` of a `type` object (the mutating list methods,
    /// as jinja2's `ImmutableSandboxedEnvironment` does).
    case unsafeAccess(attribute: String, type: String)

    /// Whether this is an error of rendering (not of parsing, nor the template's own `raise_exception`).
    public var isRuntime: Bool {
        switch self {
        case .syntax, .raised: return false
        default: return true
        }
    }

    public var description: String {
        switch self {
        case .syntax(let l, let c, let m): return "chat template syntax error at line \(l), column \(c): \(m)"
        case .raised(let m): return "chat template raised an exception: \(m)"
        case .divisionByZero(let op): return "chat template error: \(op) by zero"
        case .integerOverflow(let op): return "chat template error: integer overflow in \(op)"
        case .unsupportedOperands(let op, let a, let b): return "chat template error: unsupported operand type(s) for \(op): '\(a)' and '\(b)'"
        case .rangeTooLarge(let n, let limit):
            return "chat template error: range of \(n) items too big (the sandbox blocks ranges larger than MAX_RANGE (\(limit)))"
        case .nestingTooDeep(let what, let limit): return "chat template error: \(what) nested more than \(limit) deep"
        case .outputTooLarge(let limit): return "chat template error: output exceeds \(limit) bytes"
        case .unknownFilter(let name): return "chat template error: No filter named '\(name)'"
        case .unknownTest(let name): return "chat template error: No test named '\(name)'"
        case .unsupportedFilter(let name): return "chat template error: filter '\(name)' is not supported"
        case .undefined(let hint): return "chat template error: \(hint)"
        case .wrongArguments(let f, let reason):
            func arguments(_ n: Int) -> String { n == 1 ? "1 argument" : "\(n) arguments" }
            switch reason {
            case .tooMany(let limit, let given): return "chat template error: \(f)() takes at most \(arguments(limit)) (\(given) given)"
            case .tooFew(let minimum, let given): return "chat template error: \(f)() takes at least \(arguments(minimum)) (\(given) given)"
            case .unexpectedKeyword(let k): return "chat template error: \(f)() got an unexpected keyword argument '\(k)'"
            case .multipleValues(let k): return "chat template error: \(f)() got multiple values for argument '\(k)'"
            case .missing(let k): return "chat template error: \(f)() missing required argument '\(k)'"
            }
        case .wrongType(let op, let expected, let got): return "chat template error: \(op): expected \(expected), got '\(got)'"
        case .invalidValue(let op, let reason): return "chat template error: \(op): \(reason)"
        case .unsafeAccess(let attribute, let type):
            return "chat template error: access to attribute '\(attribute)' of '\(type)' object is unsafe (immutable sandbox)"
        }
    }
}

// MARK: runtime values

final class Namespace {
    var dict: PyDict
    init(_ d: PyDict) { dict = d }
}

struct PyDict {
    var keys: [Value] = []
    var values: [Value] = []

    func index(of key: Value) -> Int? { keys.firstIndex { pyEquals($0, key) } }
    subscript(key: Value) -> Value? { index(of: key).map { values[$0] } }
    mutating func set(_ key: Value, _ value: Value) {
        if let i = index(of: key) { values[i] = value } else { keys.append(key); values.append(value) }
    }
    var count: Int { keys.count }
}

struct Args {
    var positional: [Value]
    var keywords: [(String, Value)]

    /// Binds to named parameters (nil where absent and not defaulted).
    func bind(_ fname: String, _ names: [String]) throws -> [Value?] {
        var out = [Value?](repeating: nil, count: names.count)
        if positional.count > names.count {
            throw ChatTemplateError.wrongArguments(function: fname, reason: .tooMany(limit: names.count, given: positional.count))
        }
        for (i, v) in positional.enumerated() { out[i] = v }
        for (k, v) in keywords {
            guard let i = names.firstIndex(of: k) else { throw ChatTemplateError.wrongArguments(function: fname, reason: .unexpectedKeyword(name: k)) }
            if out[i] != nil { throw ChatTemplateError.wrongArguments(function: fname, reason: .multipleValues(name: k)) }
            out[i] = v
        }
        return out
    }
}

final class Callable {
    let name: String
    let fn: (Args) throws -> Value
    init(_ name: String, _ fn: @escaping (Args) throws -> Value) { self.name = name; self.fn = fn }
}

final class LoopInfo {
    let items: [Value]
    var index0 = 0
    let depth0: Int
    var lastChanged: [Value]? = nil
    init(items: [Value], depth0: Int) { self.items = items; self.depth0 = depth0 }
}

indirect enum Value {
    case undefined(String)   // the hint used in error messages
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([Value])
    case tuple([Value])
    case dict(PyDict)
    case namespace(Namespace)
    case function(Callable)
    case loop(LoopInfo)
    case markup(String)      // output of macros and `safe`: a string

    init(_ j: JinjaValue) {
        switch j {
        case .none: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .list(let l): self = .list(l.map(Value.init))
        case .dict(let d):
            var pd = PyDict()
            for (k, v) in d { pd.set(.string(k), Value(v)) }
            self = .dict(pd)
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true }; return false }

    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string, .markup: return "str"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        case .loop: return "LoopContext"
        }
    }

    var stringValue: String? {
        switch self {
        case .string(let s), .markup(let s): return s
        default: return nil
        }
    }
}

func truthy(_ v: Value) -> Bool {
    switch v {
    case .undefined, .none: return false
    case .bool(let b): return b
    case .int(let i): return i != 0
    case .double(let d): return d != 0
    case .string(let s), .markup(let s): return !s.isEmpty
    case .list(let l), .tuple(let l): return !l.isEmpty
    case .dict(let d): return d.count > 0
    case .namespace, .function, .loop: return true
    }
}

/// Numeric view of a value (Python: bool is an int).
enum Num { case i(Int), d(Double) }
func numeric(_ v: Value) -> Num? {
    switch v {
    case .bool(let b): return .i(b ? 1 : 0)
    case .int(let i): return .i(i)
    case .double(let d): return .d(d)
    default: return nil
    }
}
func asDouble(_ n: Num) -> Double { switch n { case .i(let i): return Double(i); case .d(let d): return d } }

func pyEquals(_ a: Value, _ b: Value) -> Bool {
    if let x = numeric(a), let y = numeric(b) {
        switch (x, y) {
        case (.i(let p), .i(let q)): return p == q
        default: return asDouble(x) == asDouble(y)
        }
    }
    switch (a, b) {
    case (.undefined, .undefined), (.none, .none): return true
    case (_, _) where a.stringValue != nil && b.stringValue != nil: return a.stringValue! == b.stringValue!
    case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { pyEquals($0, $1) }
    case (.dict(let x), .dict(let y)):
        guard x.count == y.count else { return false }
        for (k, v) in zip(x.keys, x.values) { guard let w = y[k], pyEquals(v, w) else { return false } }
        return true
    case (.namespace(let x), .namespace(let y)): return x === y
    case (.function(let x), .function(let y)): return x === y
    case (.loop(let x), .loop(let y)): return x === y
    default: return false
    }
}

// MARK: Python's str() and repr()

func pyFloatRepr(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
    // Shortest round-trip digits from Swift, re-laid out as Python's repr does.
    var s = "\(abs(d))"
    var exp = 0
    if let e = s.firstIndex(where: { $0 == "e" || $0 == "E" }) {
        exp = Int(s[s.index(after: e)...])!
        s = String(s[..<e])
    }
    var intPart = s, frac = ""
    if let dot = s.firstIndex(of: ".") { intPart = String(s[..<dot]); frac = String(s[s.index(after: dot)...]) }
    var digits = intPart + frac
    var decpt = intPart.count + exp
    // strip leading zeros
    while digits.count > 1 && digits.first == "0" { digits.removeFirst(); decpt -= 1 }
    while digits.count > 1 && digits.last == "0" { digits.removeLast() }
    let sign = d < 0 ? "-" : ""
    let n = digits.count
    if decpt > 16 || decpt < -3 {
        var m = String(digits.first!)
        if n > 1 { m += "." + digits.dropFirst() }
        let e = decpt - 1
        let es = e < 0 ? "-" : "+"
        let ea = abs(e)
        return sign + m + "e" + es + (ea < 10 ? "0" : "") + String(ea)
    }
    if decpt <= 0 { return sign + "0." + String(repeating: "0", count: -decpt) + digits }
    if decpt >= n { return sign + digits + String(repeating: "0", count: decpt - n) + ".0" }
    let idx = digits.index(digits.startIndex, offsetBy: decpt)
    return sign + digits[..<idx] + "." + digits[idx...]
}

func isPrintable(_ c: Unicode.Scalar) -> Bool {
    if c == " " { return true }
    if c.value < 0x20 || c.value == 0x7F { return false }
    if c.value < 0x7F { return true }
    switch c.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator, .spaceSeparator:
        return false
    default: return true
    }
}

func pyStringRepr(_ s: String) -> String {
    let useDouble = s.contains("'") && !s.contains("\"")
    let q: Unicode.Scalar = useDouble ? "\"" : "'"
    var out = String.UnicodeScalarView()
    out.append(q)
    for c in s.unicodeScalars {
        switch c {
        case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
        case "\n": out.append(contentsOf: "\\n".unicodeScalars)
        case "\r": out.append(contentsOf: "\\r".unicodeScalars)
        case "\t": out.append(contentsOf: "\\t".unicodeScalars)
        case q: out.append("\\"); out.append(q)
        default:
            if isPrintable(c) { out.append(c) }
            else if c.value < 0x100 { out.append(contentsOf: String(format: "\\x%02x", c.value).unicodeScalars) }
            else if c.value < 0x10000 { out.append(contentsOf: String(format: "\\u%04x", c.value).unicodeScalars) }
            else { out.append(contentsOf: String(format: "\\U%08x", c.value).unicodeScalars) }
        }
    }
    out.append(q)
    return String(out)
}

func pyRepr(_ v: Value) -> String {
    switch v {
    case .string(let s), .markup(let s): return pyStringRepr(s)
    case .undefined: return ""
    default: return pyStr(v)
    }
}

func pyStr(_ v: Value) -> String {
    switch v {
    case .undefined: return ""
    case .none: return "None"
    case .bool(let b): return b ? "True" : "False"
    case .int(let i): return String(i)
    case .double(let d): return pyFloatRepr(d)
    case .string(let s), .markup(let s): return s
    case .list(let l): return "[" + l.map(pyRepr).joined(separator: ", ") + "]"
    case .tuple(let l): return "(" + l.map(pyRepr).joined(separator: ", ") + (l.count == 1 ? ",)" : ")")
    case .dict(let d):
        return "{" + zip(d.keys, d.values).map { pyRepr($0) + ": " + pyRepr($1) }.joined(separator: ", ") + "}"
    case .namespace(let n):
        return "<Namespace " + pyStr(.dict(n.dict)) + ">"
    case .function(let f): return "<function \(f.name)>"
    case .loop: return "<LoopContext>"
    }
}

// MARK: JSON (Python's json.dumps)
//
// A JSON escaper of its own, not AttentionTensor's `SafeTensors.jsonString`: ChatTemplate depends
// on Foundation only (a product of its own), and this one writes what Python's json.dumps writes
// (`\uXXXX` for non-ASCII under ensure_ascii, surrogate pairs), which serde_json's rules do not.

struct JSONOptions {
    var ensureASCII = false
    var indent: String? = nil
    var itemSeparator = ", "
    var keySeparator = ": "
    var sortKeys = false
}

/// A JSON string literal as Python's `json.dumps` writes it (`ascii`: `ensure_ascii`). With
/// `ascii` false it escapes exactly as `SafeTensorsWriter.jsonString` (AttentionTensor); it is
/// kept here so that ChatTemplate depends on nothing else in the package.
func jsonString(_ s: String, ascii: Bool) -> String {
    var out = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if c.value < 0x20 {
                out += String(format: "\\u%04x", c.value)
            } else if ascii && c.value > 0x7E {
                if c.value >= 0x10000 {
                    let v = c.value - 0x10000
                    out += String(format: "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
                } else {
                    out += String(format: "\\u%04x", c.value)
                }
            } else {
                out.unicodeScalars.append(c)
            }
        }
    }
    return out + "\""
}

func jsonFloat(_ d: Double) -> String {
    if d.isNaN { return "NaN" }
    if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
    return pyFloatRepr(d)
}

func toJSON(_ v: Value, _ o: JSONOptions, level: Int = 0) throws -> String {
    if level > 200 { throw ChatTemplateError.nestingTooDeep(what: "tojson values", limit: 200) }
    func nl(_ l: Int) -> String { o.indent.map { "\n" + String(repeating: $0, count: l) } ?? "" }
    switch v {
    case .none: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let i): return String(i)
    case .double(let d): return jsonFloat(d)
    case .string(let s), .markup(let s): return jsonString(s, ascii: o.ensureASCII)
    case .list(let l), .tuple(let l):
        if l.isEmpty { return "[]" }
        let sep = o.itemSeparator
        let parts = try l.map { try toJSON($0, o, level: level + 1) }
        if o.indent != nil {
            return "[" + nl(level + 1) + parts.joined(separator: o.itemSeparator + nl(level + 1)) + nl(level) + "]"
        }
        return "[" + parts.joined(separator: sep) + "]"
    case .dict(let d):
        if d.count == 0 { return "{}" }
        var pairs: [(String, Value)] = []
        for (k, val) in zip(d.keys, d.values) {
            let ks: String
            switch k {
            case .string(let s), .markup(let s): ks = s
            case .int(let i): ks = String(i)
            case .double(let x): ks = jsonFloat(x)
            case .bool(let b): ks = b ? "true" : "false"
            case .none: ks = "null"
            default: throw ChatTemplateError.wrongType(operation: "tojson key", expected: "str, int, float, bool or None", got: k.typeName)
            }
            pairs.append((ks, val))
        }
        if o.sortKeys { pairs.sort { Array($0.0.unicodeScalars.map(\.value)).lexicographicallyPrecedes($1.0.unicodeScalars.map(\.value)) } }
        let parts = try pairs.map { jsonString($0.0, ascii: o.ensureASCII) + o.keySeparator + (try toJSON($0.1, o, level: level + 1)) }
        if o.indent != nil {
            return "{" + nl(level + 1) + parts.joined(separator: o.itemSeparator + nl(level + 1)) + nl(level) + "}"
        }
        return "{" + parts.joined(separator: o.itemSeparator) + "}"
    case .undefined, .namespace, .function, .loop:
        throw ChatTemplateError.wrongType(operation: "tojson", expected: "a JSON serializable value", got: v.typeName)
    }
}
