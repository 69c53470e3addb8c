/// Where and why the header is not JSON.
struct HeaderJSONSyntaxError: Error {
    /// Byte offset in the header (0 is the byte after the 8-byte length).
    let offset: Int
    let reason: String
}

/// A strict RFC 8259 JSON reader over the header's bytes (already validated as UTF-8), pulled by
/// the header's schema instead of building a document tree.
///
/// Foundation's `JSONSerialization` is not used because it hides what the format needs checked:
/// it keeps the last of duplicate keys (two entries for one tensor would go unnoticed), reads
/// `true` and `3.0` as the integers 1 and 3, and builds a tree costing many times the header's
/// size (a 100 MB header of `[1,1,1,…]` took 1.8 GB). Pulled by the schema, the reader keeps
/// only what the archive keeps, and refuses a wrong value as soon as it is read. Values the
/// schema does not want are still parsed in full (syntax and nesting checked) but only
/// summarised for the error message.
struct HeaderJSONReader {
    /// A valid header nests three deep (header, entry, shape); the limit only keeps a hostile
    /// `[[[[…` from exhausting the stack of the recursive skip.
    static let maxDepth = 64

    /// A value read without building it: the scalars the schema uses, anything else summarised.
    enum Leaf: Equatable {
        /// A number written as an integer (no fraction, no exponent) that fits `Int`.
        case integer(Int)
        case string(String)
        case null
        /// Any other value, described for an error message ("an object", "2.0", "true", …).
        case other(String)

        var summary: String {
            switch self {
            case .integer(let n): return String(n)
            case .string(let s): return s.utf8.count <= 40 ? "the string \(s.debugDescription)" : "a string"
            case .null: return "null"
            case .other(let s): return s
            }
        }
    }

    private let bytes: [UInt8]
    private var i = 0
    private var depth = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    // MARK: - Structure

    /// Whether the next value is an object (after whitespace; the end of the header is an error).
    mutating func atObject() throws(HeaderJSONSyntaxError) -> Bool { try peek() == UInt8(ascii: "{") }

    /// Whether the next value is an array.
    mutating func atArray() throws(HeaderJSONSyntaxError) -> Bool { try peek() == UInt8(ascii: "[") }

    /// Reads the object at the current position (``atObject()`` must be true), handing each key
    /// to `member`, which must read the member's value.
    mutating func object(_ member: (String, inout HeaderJSONReader) throws -> Void) throws {
        try enter()
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { return leave() }
        while true {
            skipWhitespace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected a quoted key") }
            let key = try string()
            skipWhitespace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("expected ':' after a key") }
            i += 1
            try member(key, &self)
            skipWhitespace()
            guard i < bytes.count else { throw error("the header ends inside an object") }
            if bytes[i] == UInt8(ascii: "}") { return leave() }
            guard bytes[i] == UInt8(ascii: ",") else { throw error("expected ',' or '}' in an object") }
            i += 1
        }
    }

    /// Reads the array at the current position (``atArray()`` must be true), calling `element`
    /// to read each element.
    mutating func array(_ element: (inout HeaderJSONReader) throws -> Void) throws {
        try enter()
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { return leave() }
        while true {
            try element(&self)
            skipWhitespace()
            guard i < bytes.count else { throw error("the header ends inside an array") }
            if bytes[i] == UInt8(ascii: "]") { return leave() }
            guard bytes[i] == UInt8(ascii: ",") else { throw error("expected ',' or ']' in an array") }
            i += 1
        }
    }

    /// Reads any value: integers, strings and null as themselves, anything else (containers
    /// included, checked but not kept) as a summary.
    mutating func leaf() throws(HeaderJSONSyntaxError) -> Leaf {
        switch try peek() {
        case UInt8(ascii: "{"):
            try skipContainer(open: UInt8(ascii: "{"))
            return .other("an object")
        case UInt8(ascii: "["):
            try skipContainer(open: UInt8(ascii: "["))
            return .other("an array")
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        case UInt8(ascii: "t"): try literal("true"); return .other("true")
        case UInt8(ascii: "f"): try literal("false"); return .other("false")
        case UInt8(ascii: "n"): try literal("null"); return .null
        case let b: throw error("unexpected '\(printable(b))' where a value should start")
        }
    }

    /// Only whitespace may follow the header's value (writers pad with spaces).
    mutating func end() throws(HeaderJSONSyntaxError) {
        skipWhitespace()
        guard i == bytes.count else { throw error("unexpected '\(printable(bytes[i]))' after the header object") }
    }

    // MARK: - Pieces

    private func error(_ reason: String, at offset: Int? = nil) -> HeaderJSONSyntaxError {
        HeaderJSONSyntaxError(offset: offset ?? i, reason: reason)
    }

    /// A byte as text for a message: printable ASCII as itself, anything else as hex.
    private func printable(_ b: UInt8) -> String {
        (0x21...0x7e).contains(b) ? String(UnicodeScalar(b)) : "0x" + String(b, radix: 16)
    }

    private mutating func skipWhitespace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0a || bytes[i] == 0x0d || bytes[i] == 0x09 { i += 1 }
    }

    /// The first byte of the next value.
    private mutating func peek() throws(HeaderJSONSyntaxError) -> UInt8 {
        skipWhitespace()
        guard i < bytes.count else { throw error("the header ends where a value should start") }
        return bytes[i]
    }

    private mutating func enter() throws(HeaderJSONSyntaxError) {
        guard depth < Self.maxDepth else { throw error("nested deeper than \(Self.maxDepth) levels") }
        depth += 1
        i += 1   // "{" or "["
    }

    private mutating func leave() {
        depth -= 1
        i += 1   // "}" or "]"
    }

    /// Parses and discards the object or array at the current position.
    private mutating func skipContainer(open: UInt8) throws(HeaderJSONSyntaxError) {
        do {
            if open == UInt8(ascii: "{") {
                try object { _, reader in _ = try reader.leaf() }
            } else {
                try array { reader in _ = try reader.leaf() }
            }
        } catch let e as HeaderJSONSyntaxError {
            throw e
        } catch {
            // The closures above throw only syntax errors.
            throw self.error("unexpected error \(error)")
        }
    }

    private mutating func literal(_ word: StaticString) throws(HeaderJSONSyntaxError) {
        let n = word.utf8CodeUnitCount
        let matches = word.withUTF8Buffer { w in i + n <= bytes.count && bytes[i..<i + n].elementsEqual(w) }
        guard matches else { throw error("unexpected '\(printable(bytes[i]))' where a value should start") }
        i += n
    }

    /// A string starting at the opening quote. The bytes were validated as UTF-8 before parsing,
    /// so unescaped runs are copied through; escapes must form whole scalars (no lone surrogates).
    private mutating func string() throws(HeaderJSONSyntaxError) -> String {
        let start = i
        i += 1   // opening quote
        var out = [UInt8]()
        while true {
            guard i < bytes.count else { throw error("unterminated string", at: start) }
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "\""):
                i += 1
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard i + 1 < bytes.count else { throw error("unterminated string", at: start) }
                let e = bytes[i + 1]
                i += 2
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0c)
                case UInt8(ascii: "n"): out.append(0x0a)
                case UInt8(ascii: "r"): out.append(0x0d)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xd800..<0xdc00).contains(scalar) {
                        // A high surrogate must be followed by an escaped low one.
                        guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                            throw error("unpaired surrogate in a \\u escape")
                        }
                        i += 2
                        let low = try hex4()
                        guard (0xdc00..<0xe000).contains(low) else { throw error("unpaired surrogate in a \\u escape") }
                        scalar = 0x10000 + ((scalar - 0xd800) << 10) + (low - 0xdc00)
                    } else if (0xdc00..<0xe000).contains(scalar) {
                        throw error("unpaired surrogate in a \\u escape")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw error("invalid \\u escape") }
                    UTF8.encode(u) { out.append($0) }
                default:
                    throw error("invalid escape '\\\(printable(e))'", at: i - 2)
                }
            case 0x00..<0x20:
                throw error("unescaped control character 0x\(String(b, radix: 16)) in a string")
            default:
                out.append(b)
                i += 1
            }
        }
    }

    private mutating func hex4() throws(HeaderJSONSyntaxError) -> UInt32 {
        guard i + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let digit: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
            default: throw error("invalid hex digit '\(printable(b))' in a \\u escape")
            }
            v = v << 4 | UInt32(digit)
            i += 1
        }
        return v
    }

    private func isDigit(_ k: Int) -> Bool { k < bytes.count && (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[k]) }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, accumulated as it is scanned so
    /// that the common case (a small integer) allocates nothing.
    private mutating func number() throws(HeaderJSONSyntaxError) -> Leaf {
        let start = i
        let negative = bytes[i] == UInt8(ascii: "-")
        if negative { i += 1 }
        guard isDigit(i) else { throw error("expected a digit in a number") }
        var value = 0
        var fits = true
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
            if isDigit(i) { throw error("leading zero in a number", at: start) }
        } else {
            while isDigit(i) {
                // Accumulated negatively when the sign says so, so Int.min fits too.
                let d = Int(bytes[i] - UInt8(ascii: "0"))
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (s, o2) = negative ? m.subtractingReportingOverflow(d) : m.addingReportingOverflow(d)
                if o1 || o2 { fits = false } else { value = s }
                i += 1
            }
        }
        var isInteger = true
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard isDigit(i) else { throw error("expected a digit after the decimal point") }
            while isDigit(i) { i += 1 }
            isInteger = false
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard isDigit(i) else { throw error("expected a digit in an exponent") }
            while isDigit(i) { i += 1 }
            isInteger = false
        }
        if isInteger && fits { return .integer(value) }
        let length = i - start
        return .other(length <= 40 ? String(decoding: bytes[start..<i], as: UTF8.self) : "a \(length)-character number")
    }
}
