import Foundation

// Python's str methods, dict/list methods, jinja2's filters and tests, and the globals.

func pyStrip(_ s: String, _ chars: String?, left: Bool, right: Bool) -> String {
    let u = Array(s.unicodeScalars)
    let set = chars.map { Set($0.unicodeScalars) }
    let strip: (Unicode.Scalar) -> Bool = { c in set.map { $0.contains(c) } ?? isPythonWhitespace(c) }
    var a = 0, b = u.count
    if left { while a < b && strip(u[a]) { a += 1 } }
    if right { while b > a && strip(u[b - 1]) { b -= 1 } }
    var r = String.UnicodeScalarView()
    r.append(contentsOf: u[a..<b])
    return String(r)
}

/// `operation` names the method in errors (`split`, `rsplit`).
func pySplit(_ s: String, _ sep: String?, _ maxsplit: Int, operation: String = "split") throws -> [String] {
    let u = Array(s.unicodeScalars)
    func str(_ x: ArraySlice<Unicode.Scalar>) -> String { var r = String.UnicodeScalarView(); r.append(contentsOf: x); return String(r) }
    var out: [String] = []
    if let sep {
        let p = Array(sep.unicodeScalars)
        if p.isEmpty { throw ChatTemplateError.invalidValue(operation: operation, reason: "empty separator") }
        var start = 0, i = 0
        while i + p.count <= u.count {
            if (maxsplit < 0 || out.count < maxsplit) && Array(u[i..<(i + p.count)]) == p {
                out.append(str(u[start..<i]))
                i += p.count
                start = i
            } else {
                i += 1
            }
        }
        out.append(str(u[start...]))
        return out
    }
    var i = 0
    while i < u.count {
        while i < u.count && isPythonWhitespace(u[i]) { i += 1 }
        if i == u.count { break }
        if maxsplit >= 0 && out.count >= maxsplit {
            var e = u.count
            while e > i && isPythonWhitespace(u[e - 1]) { e -= 1 }
            out.append(str(u[i..<e]))
            break
        }
        let st = i
        while i < u.count && !isPythonWhitespace(u[i]) { i += 1 }
        out.append(str(u[st..<i]))
    }
    return out
}

func pyReplace(_ s: String, _ old: String, _ new: String, _ count: Int) -> String {
    if count == 0 { return s }
    if old.isEmpty {
        var out = ""
        var n = 0
        for c in s.unicodeScalars {
            if count < 0 || n < count { out += new; n += 1 }
            out.unicodeScalars.append(c)
        }
        if count < 0 || n < count { out += new }
        return out
    }
    let u = Array(s.unicodeScalars), p = Array(old.unicodeScalars)
    var out = String.UnicodeScalarView()
    var i = 0, n = 0
    while i < u.count {
        if (count < 0 || n < count) && i + p.count <= u.count && Array(u[i..<(i + p.count)]) == p {
            out.append(contentsOf: new.unicodeScalars)
            i += p.count
            n += 1
        } else {
            out.append(u[i])
            i += 1
        }
    }
    return String(out)
}

func isCased(_ c: Unicode.Scalar) -> Bool { c.properties.isCased }

func pyTitleMethod(_ s: String) -> String {
    var out = ""
    var prevCased = false
    for c in s.unicodeScalars {
        let ch = String(c)
        out += prevCased ? ch.lowercased() : ch.uppercased()
        prevCased = isCased(c)
    }
    return out
}

func pyCapitalize(_ s: String) -> String {
    guard let f = s.unicodeScalars.first else { return s }
    return String(f).uppercased() + String(String.UnicodeScalarView(s.unicodeScalars.dropFirst())).lowercased()
}

/// jinja2's `title` filter: words start after runs of spaces, `-`, `(`, `{`, `[`, `<`.
func jinjaTitle(_ s: String) -> String {
    var out = ""
    var atStart = true
    for c in s.unicodeScalars {
        let sep = isPythonWhitespace(c) || "-({[<".unicodeScalars.contains(c)
        if sep { out.unicodeScalars.append(c); atStart = true; continue }
        out += atStart ? String(c).uppercased() : String(c).lowercased()
        atStart = false
    }
    return out
}

func pySplitLines(_ s: String) -> [String] {
    var out: [String] = []
    var cur = String.UnicodeScalarView()
    let u = Array(s.unicodeScalars)
    var i = 0
    while i < u.count {
        let c = u[i]
        switch c.value {
        case 0x0A, 0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029:
            out.append(String(cur)); cur = String.UnicodeScalarView()
        case 0x0D:
            out.append(String(cur)); cur = String.UnicodeScalarView()
            if i + 1 < u.count && u[i + 1] == "\n" { i += 1 }
        default:
            cur.append(c)
        }
        i += 1
    }
    if !cur.isEmpty { out.append(String(cur)) }
    return out
}

func htmlEscape(_ s: String) -> String {
    var out = ""
    for c in s.unicodeScalars {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&#34;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(c)
        }
    }
    return out
}

extension Interpreter {
    /// The argument `parameter` of `function`, which the call must give.
    func requireArgument(_ v: Value?, _ function: String, _ parameter: String) throws -> Value {
        guard let v else { throw ChatTemplateError.wrongArguments(function: function, reason: .missing(name: parameter)) }
        return v
    }

    /// `v` as a string; `what` names the argument in the error (`strip(chars)`).
    func requireString(_ v: Value, _ what: String) throws -> String {
        guard let s = v.stringValue else { throw ChatTemplateError.wrongType(operation: what, expected: "str", got: v.typeName) }
        return s
    }

    /// `v` as an integer, `dflt` if absent or None; `what` names the argument in the error (`split(maxsplit)`).
    func optInt(_ v: Value?, _ dflt: Int, _ what: String) throws -> Int {
        guard let v else { return dflt }
        if case .none = v { return dflt }
        guard case .i(let i)? = numeric(v) else { throw ChatTemplateError.wrongType(operation: what, expected: "an integer", got: v.typeName) }
        return i
    }

    func method(_ name: String, _ fn: @escaping (Args) throws -> Value) -> Value { .function(Callable(name, fn)) }

    func stringMethod(_ s: String, _ name: String) -> Value? {
        switch name {
        case "strip", "lstrip", "rstrip":
            return method(name) { a in
                let p = try a.bind(name, ["chars"])
                var chars: String? = nil
                if let c = p[0], !(c.isNoneValue) { chars = try self.requireString(c, "\(name)(chars)") }
                return .string(pyStrip(s, chars, left: name != "rstrip", right: name != "lstrip"))
            }
        case "split", "rsplit":
            return method(name) { a in
                let p = try a.bind(name, ["sep", "maxsplit"])
                var sep: String? = nil
                if let c = p[0], !c.isNoneValue { sep = try self.requireString(c, "\(name)(sep)") }
                let m = try self.optInt(p[1], -1, "\(name)(maxsplit)")
                if name == "rsplit" && m >= 0 {
                    // rsplit with a limit: split the reversed string.
                    let rev = String(String.UnicodeScalarView(s.unicodeScalars.reversed()))
                    let rsep = sep.map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }
                    let parts = try pySplit(rev, rsep, m, operation: name).map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }
                    return .list(parts.reversed().map { .string($0) })
                }
                return .list(try pySplit(s, sep, m, operation: name).map { .string($0) })
            }
        case "startswith", "endswith":
            return method(name) { a in
                let p = try a.bind(name, ["prefix", "start", "end"])
                var cands: [String] = []
                if case .tuple(let t)? = p[0] { cands = try t.map { try self.requireString($0, "\(name)(prefix)") } }
                else { cands = [try self.requireString(try self.requireArgument(p[0], name, "prefix"), "\(name)(prefix)")] }
                let u = Array(s.unicodeScalars)
                let st = try self.optInt(p[1], 0, "\(name)(start)"), en = try self.optInt(p[2], u.count, "\(name)(end)")
                guard case .string(let sub) = try self.slice(.string(s), .int(st), .int(en), nil) else { return .bool(false) }
                return .bool(cands.contains { name == "startswith" ? sub.unicodeScalars.starts(with: $0.unicodeScalars) : Array(sub.unicodeScalars).reversed().starts(with: Array($0.unicodeScalars).reversed()) })
            }
        case "upper": return method(name) { _ in .string(s.uppercased()) }
        case "lower": return method(name) { _ in .string(s.lowercased()) }
        case "title": return method(name) { _ in .string(pyTitleMethod(s)) }
        case "capitalize": return method(name) { _ in .string(pyCapitalize(s)) }
        case "replace":
            return method(name) { a in
                let p = try a.bind(name, ["old", "new", "count"])
                let old = try self.requireString(try self.requireArgument(p[0], name, "old"), "replace(old)")
                let new = try self.requireString(try self.requireArgument(p[1], name, "new"), "replace(new)")
                return .string(pyReplace(s, old, new, try self.optInt(p[2], -1, "replace(count)")))
            }
        case "find", "rfind", "index", "rindex", "count":
            return method(name) { a in
                let p = try a.bind(name, ["sub"])
                let sub = Array(try self.requireString(try self.requireArgument(p[0], name, "sub"), "\(name)(sub)").unicodeScalars)
                let u = Array(s.unicodeScalars)
                var hits: [Int] = []
                var i = 0
                while i + sub.count <= u.count {
                    if Array(u[i..<(i + sub.count)]) == sub {
                        hits.append(i)
                        if name == "count" { i += max(sub.count, 1); continue }
                    }
                    i += 1
                }
                if name == "count" { return .int(sub.isEmpty ? u.count + 1 : hits.count) }
                let r = (name == "find" || name == "index") ? hits.first : hits.last
                if let r { return .int(r) }
                if name == "index" || name == "rindex" { throw ChatTemplateError.invalidValue(operation: name, reason: "substring not found") }
                return .int(-1)
            }
        case "join":
            return method(name) { a in
                let p = try a.bind(name, ["iterable"])
                let items = try self.iterate(p[0] ?? .undefined("missing iterable"))
                return .string(try items.map { try self.requireString($0, "join(iterable) item") }.joined(separator: s))
            }
        case "splitlines": return method(name) { _ in .list(pySplitLines(s).map { .string($0) }) }
        case "isdigit": return method(name) { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType == .decimal || $0.properties.numericType == .digit }) }
        case "isalpha": return method(name) { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic }) }
        case "isspace": return method(name) { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(isPythonWhitespace)) }
        case "islower": return method(name) { _ in .bool(s.contains { $0.isCased } && s.lowercased() == s) }
        case "isupper": return method(name) { _ in .bool(s.contains { $0.isCased } && s.uppercased() == s) }
        default: return nil
        }
    }

    func dictMethod(_ d: PyDict, _ name: String) -> Value? {
        switch name {
        case "items": return method(name) { _ in .list(zip(d.keys, d.values).map { .tuple([$0, $1]) }) }
        case "keys": return method(name) { _ in .list(d.keys) }
        case "values": return method(name) { _ in .list(d.values) }
        case "get":
            return method(name) { a in
                let p = try a.bind(name, ["key", "default"])
                let k = try self.requireArgument(p[0], name, "key")
                return d[k] ?? (p[1] ?? .none)
            }
        default: return nil
        }
    }

    func listMethod(_ l: [Value], _ name: String) -> Value? {
        switch name {
        case "count": return method(name) { a in .int(l.filter { pyEquals($0, a.positional.first ?? .none) }.count) }
        case "index":
            return method(name) { a in
                let x: Value = a.positional.first ?? .none
                if let i = l.firstIndex(where: { pyEquals($0, x) }) { return .int(i) }
                throw ChatTemplateError.invalidValue(operation: name, reason: "\(pyRepr(x)) is not in list")
            }
        case "append", "pop", "insert", "extend", "remove", "clear", "sort", "reverse":
            return method(name) { _ in throw ChatTemplateError.unsafeAccess(attribute: name, type: "list") }
        default: return nil
        }
    }

    // MARK: filters

    func length(_ v: Value) throws -> Int {
        switch v {
        case .string(let s), .markup(let s): return s.unicodeScalars.count
        case .list(let l), .tuple(let l): return l.count
        case .dict(let d): return d.count
        case .namespace(let n): return n.dict.count
        case .undefined: return 0
        default: throw ChatTemplateError.wrongType(operation: "length", expected: "a sized value", got: v.typeName)
        }
    }

    func attrPath(_ v: Value, _ path: Value) throws -> Value {
        if case .int = path { return try getItem(v, path) }
        let p = try requireString(path, "attribute")
        var cur = v
        for part in p.split(separator: ".", omittingEmptySubsequences: false) {
            if let i = Int(part) { cur = try getItem(cur, .int(i)) } else { cur = try getItem(cur, .string(String(part))) }
        }
        return cur
    }

    func sortKey(_ v: Value, caseSensitive: Bool) -> Value {
        if !caseSensitive, let s = v.stringValue { return .string(s.lowercased()) }
        return v
    }

    func applyFilter(_ name: String, _ v: Value, _ a: Args) throws -> Value {
        switch name {
        case "trim":
            let p = try a.bind(name, ["chars"])
            var chars: String? = nil
            if let c = p[0], !c.isNoneValue { chars = try requireString(c, "trim(chars)") }
            return .string(pyStrip(pyStr(v), chars, left: true, right: true))
        case "tojson":
            let p = try a.bind(name, ["ensure_ascii", "indent", "separators", "sort_keys"])
            var o = JSONOptions()
            if let e = p[0] { o.ensureASCII = truthy(e) }
            if let ind = p[1], !ind.isNoneValue {
                if let s = ind.stringValue { o.indent = s }
                else { o.indent = String(repeating: " ", count: max(0, try optInt(ind, 0, "tojson(indent)"))) }
                o.itemSeparator = ","
            }
            if let sep = p[2], !sep.isNoneValue {
                let parts = try iterate(sep)
                guard parts.count == 2 else {
                    throw ChatTemplateError.invalidValue(operation: "tojson(separators)", reason: "expected a pair (item separator, key separator), got \(parts.count) items")
                }
                o.itemSeparator = try requireString(parts[0], "tojson(separators)")
                o.keySeparator = try requireString(parts[1], "tojson(separators)")
            }
            if let sk = p[3] { o.sortKeys = truthy(sk) }
            return .string(try toJSON(v, o))
        case "length", "count":
            return .int(try length(v))
        case "upper": return .string(pyStr(v).uppercased())
        case "lower": return .string(pyStr(v).lowercased())
        case "capitalize": return .string(pyCapitalize(pyStr(v)))
        case "title": return .string(jinjaTitle(pyStr(v)))
        case "replace":
            let p = try a.bind(name, ["old", "new", "count"])
            return .string(pyReplace(pyStr(v), pyStr(p[0] ?? .string("")), pyStr(p[1] ?? .string("")), try optInt(p[2], -1, "replace(count)")))
        case "join":
            let p = try a.bind(name, ["d", "attribute"])
            var items = try iterate(v)
            if let at = p[1], !at.isNoneValue { items = try items.map { try attrPath($0, at) } }
            return .string(items.map(pyStr).joined(separator: pyStr(p[0] ?? .string(""))))
        case "default", "d":
            let p = try a.bind(name, ["default_value", "boolean"])
            let useIt = v.isUndefined || ((p[1].map(truthy) ?? false) && !truthy(v))
            return useIt ? (p[0] ?? .string("")) : v
        case "first":
            if case .dict(let d) = v { return d.keys.first ?? .undefined("No first item, sequence was empty.") }
            return try iterate(v).first ?? .undefined("No first item, sequence was empty.")
        case "last":
            if case .dict(let d) = v { return d.keys.last ?? .undefined("No last item, sequence was empty.") }
            return try iterate(v).last ?? .undefined("No last item, sequence was empty.")
        case "list": return .list(try iterate(v))
        case "string": return .string(pyStr(v))
        case "safe": return .markup(pyStr(v))
        case "escape", "e", "forceescape":
            if case .markup = v, name != "forceescape" { return v }
            return .markup(htmlEscape(pyStr(v)))
        case "int":
            let p = try a.bind(name, ["default", "base"])
            let dflt = p[0] ?? .int(0)
            let base = try optInt(p[1], 10, "int(base)")
            switch v {
            case .int(let i): return .int(i)
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d): return d.isFinite && abs(d) < 9.2e18 ? .int(Int(d.rounded(.towardZero))) : dflt
            case .string(let s), .markup(let s):
                let t = pyStrip(s, nil, left: true, right: true).replacingOccurrences(of: "_", with: "")
                if let i = Int(t.hasPrefix("+") ? String(t.dropFirst()) : t, radix: base) { return .int(i) }
                if base == 10, let d = Double(t), d.isFinite, abs(d) < 9.2e18 { return .int(Int(d.rounded(.towardZero))) }
                return dflt
            default: return dflt
            }
        case "float":
            let p = try a.bind(name, ["default"])
            let dflt = p[0] ?? .double(0)
            switch v {
            case .int(let i): return .double(Double(i))
            case .bool(let b): return .double(b ? 1 : 0)
            case .double: return v
            case .string(let s), .markup(let s):
                let t = pyStrip(s, nil, left: true, right: true).lowercased()
                switch t {
                case "inf", "+inf", "infinity", "+infinity": return .double(.infinity)
                case "-inf", "-infinity": return .double(-.infinity)
                case "nan", "+nan", "-nan": return .double(.nan)
                default: break
                }
                if t.contains(where: { $0.isLetter && $0 != "e" }) { return dflt }
                return Double(t).map { .double($0) } ?? dflt
            default: return dflt
            }
        case "items":
            switch v {
            case .undefined: return .list([])
            case .dict(let d): return .list(zip(d.keys, d.values).map { .tuple([$0, $1]) })
            default: throw ChatTemplateError.wrongType(operation: "items", expected: "a mapping", got: v.typeName)
            }
        case "dictsort":
            guard case .dict(let d) = v else { throw ChatTemplateError.wrongType(operation: "dictsort", expected: "a mapping", got: v.typeName) }
            let p = try a.bind(name, ["case_sensitive", "by", "reverse"])
            let cs = p[0].map(truthy) ?? false
            let byValue = (p[1]?.stringValue ?? "key") == "value"
            var pairs = zip(d.keys, d.values).map { ($0, $1) }
            var err: Error? = nil
            pairs.sort { x, y in
                do { return try order(sortKey(byValue ? x.1 : x.0, caseSensitive: cs), sortKey(byValue ? y.1 : y.0, caseSensitive: cs), "<") < 0 }
                catch { err = error; return false }
            }
            if let err { throw err }
            if p[2].map(truthy) ?? false { pairs.reverse() }
            return .list(pairs.map { .tuple([$0.0, $0.1]) })
        case "indent":
            let p = try a.bind(name, ["width", "first", "blank"])
            let ind: String
            if let w = p[0], let s = w.stringValue { ind = s } else { ind = String(repeating: " ", count: max(0, try optInt(p[0], 4, "indent(width)"))) }
            let s = pyStr(v) + "\n"
            var rv: String
            if p[2].map(truthy) ?? false {
                rv = pySplitLines(s).joined(separator: "\n" + ind)
            } else {
                var lines = pySplitLines(s)
                rv = lines.isEmpty ? "" : lines.removeFirst()
                if !lines.isEmpty { rv += "\n" + lines.map { $0.isEmpty ? $0 : ind + $0 }.joined(separator: "\n") }
            }
            if p[1].map(truthy) ?? false { rv = ind + rv }
            return .string(rv)
        case "selectattr", "rejectattr", "select", "reject":
            let items = try iterate(v)
            var pos = a.positional
            let byAttr = name.hasSuffix("attr")
            var attr: Value? = nil
            if byAttr {
                guard !pos.isEmpty else { throw ChatTemplateError.wrongArguments(function: name, reason: .missing(name: "attribute")) }
                attr = pos.removeFirst()
            }
            let testName = pos.isEmpty ? nil : try requireString(pos.removeFirst(), "\(name)(test)")
            if let t = testName, !knownTests.contains(t) { throw ChatTemplateError.unknownTest(name: t) }
            let keep = name.hasPrefix("select")
            var out: [Value] = []
            for item in items {
                let x = try attr.map { try attrPath(item, $0) } ?? item
                let r = try testName.map { try applyTest($0, x, Args(positional: pos, keywords: a.keywords)) } ?? truthy(x)
                if r == keep { out.append(item) }
            }
            return .list(out)
        case "map":
            let items = try iterate(v)
            if let at = a.keywords.first(where: { $0.0 == "attribute" })?.1 {
                let dflt = a.keywords.first(where: { $0.0 == "default" })?.1
                return .list(try items.map { item in
                    let r = try attrPath(item, at)
                    if r.isUndefined, let dflt { return dflt }
                    return r
                })
            }
            var pos = a.positional
            guard !pos.isEmpty else { throw ChatTemplateError.wrongArguments(function: name, reason: .missing(name: "filter")) }
            let f = try requireString(pos.removeFirst(), "map(filter)")
            guard knownFilters.contains(f) else { throw ChatTemplateError.unknownFilter(name: f) }
            return .list(try items.map { try applyFilter(f, $0, Args(positional: pos, keywords: a.keywords)) })
        case "abs":
            switch numeric(v) {
            case .i(let i)?: return .int(abs(i))
            case .d(let d)?: return .double(abs(d))
            case nil: throw ChatTemplateError.wrongType(operation: "abs", expected: "a number", got: v.typeName)
            }
        case "round":
            let p = try a.bind(name, ["precision", "method"])
            let prec = try optInt(p[0], 0, "round(precision)")
            let m = p[1]?.stringValue ?? "common"
            guard let n = numeric(v) else { throw ChatTemplateError.wrongType(operation: "round", expected: "a number", got: v.typeName) }
            let x = asDouble(n)
            let scale = pow(10.0, Double(prec))
            switch m {
            case "common":
                if case .i(let i) = n, p[0] == nil || prec >= 0 { return p[0] == nil ? .int(i) : .double(Double(i)) }
                return .double((x * scale).rounded(.toNearestOrEven) / scale)
            case "ceil": return .double((x * scale).rounded(.up) / scale)
            case "floor": return .double((x * scale).rounded(.down) / scale)
            default: throw ChatTemplateError.invalidValue(operation: "round(method)", reason: "must be 'common', 'ceil' or 'floor', not \(pyRepr(.string(m)))")
            }
        case "reverse":
            if let s = v.stringValue { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .list(try iterate(v).reversed())
        case "sort", "unique", "min", "max":
            let p = try a.bind(name, name == "sort" ? ["reverse", "case_sensitive", "attribute"] : ["case_sensitive", "attribute"])
            let rev = name == "sort" ? (p[0].map(truthy) ?? false) : false
            let cs = (name == "sort" ? p[1] : p[0]).map(truthy) ?? false
            let at = name == "sort" ? p[2] : p[1]
            let items = try iterate(v)
            let keyed = try items.map { it in (item: it, key: sortKey(try at.map { try attrPath(it, $0) } ?? it, caseSensitive: cs)) }
            if name == "unique" {
                var seen: [Value] = [], out: [Value] = []
                for k in keyed where !seen.contains(where: { pyEquals($0, k.key) }) { seen.append(k.key); out.append(k.item) }
                return .list(out)
            }
            var err: Error? = nil
            var sorted = keyed
            // A stable sort, as Python's.
            sorted = sorted.enumerated().sorted { x, y in
                do {
                    let c = try order(x.element.key, y.element.key, "<")
                    return c == 0 ? x.offset < y.offset : (rev ? c > 0 : c < 0)
                } catch { err = error; return false }
            }.map(\.element)
            if let err { throw err }
            if name == "sort" { return .list(sorted.map(\.item)) }
            if sorted.isEmpty { return .undefined("No aggregated item, sequence was empty.") }
            return name == "min" ? sorted.first!.item : sorted.last!.item
        case "sum":
            let p = try a.bind(name, ["attribute", "start"])
            var total = p[1] ?? .int(0)
            for item in try iterate(v) {
                total = try binary("+", total, try p[0].map { try attrPath(item, $0) } ?? item)
            }
            return total
        case "wordcount":
            return .int(try pySplit(pyStr(v), nil, -1).count)
        case "center":
            let p = try a.bind(name, ["width"])
            let w = try optInt(p[0], 80, "center(width)")
            let s = pyStr(v)
            let n = s.unicodeScalars.count
            if n >= w { return .string(s) }
            let total = w - n
            let left = total / 2 + (total & w & 1)
            return .string(String(repeating: " ", count: left) + s + String(repeating: " ", count: total - left))
        case "batch":
            let p = try a.bind(name, ["linecount", "fill_with"])
            let n = try optInt(p[0], 1, "batch(linecount)")
            guard n > 0 else { throw ChatTemplateError.invalidValue(operation: "batch(linecount)", reason: "must be positive, not \(n)") }
            var out: [Value] = [], cur: [Value] = []
            for item in try iterate(v) {
                cur.append(item)
                if cur.count == n { out.append(.list(cur)); cur = [] }
            }
            if !cur.isEmpty {
                if let f = p[1] { while cur.count < n { cur.append(f) } }
                out.append(.list(cur))
            }
            return .list(out)
        case "attr":
            let p = try a.bind(name, ["name"])
            return try getAttr(v, try requireString(try requireArgument(p[0], name, "name"), "attr(name)"))
        case "pprint":
            return .string(pyRepr(v))
        case "striptags", "truncate", "format":
            throw ChatTemplateError.unsupportedFilter(name: name)
        default:
            throw ChatTemplateError.unknownFilter(name: name)
        }
    }

    // MARK: tests

    func applyTest(_ name: String, _ v: Value, _ a: Args) throws -> Bool {
        let arg = a.positional.first ?? a.keywords.first?.1
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": return v.isNoneValue
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "number": return numeric(v) != nil
        case "string": return v.stringValue != nil
        case "mapping": if case .dict = v { return true }; return false
        case "iterable":
            switch v {
            case .string, .markup, .list, .tuple, .dict, .undefined: return true
            default: return false
            }
        case "sequence":
            switch v {
            case .string, .markup, .list, .tuple, .dict: return true
            default: return false
            }
        case "callable": if case .function = v { return true }; if case .undefined = v { return true }; return false
        case "odd", "even":
            guard case .i(let i)? = numeric(v) else { throw ChatTemplateError.wrongType(operation: "\(name) test", expected: "an integer", got: v.typeName) }
            return (i & 1 == 1) == (name == "odd")
        case "divisibleby":
            guard case .i(let i)? = numeric(v) else { throw ChatTemplateError.wrongType(operation: "divisibleby test", expected: "an integer", got: v.typeName) }
            let num = try requireArgument(arg, name, "num")
            guard case .i(let n)? = numeric(num) else { throw ChatTemplateError.wrongType(operation: "divisibleby(num)", expected: "an integer", got: num.typeName) }
            if n == 0 { throw ChatTemplateError.divisionByZero(operator: "divisibleby") }
            return i % n == 0
        case "eq", "equalto", "==": return pyEquals(v, arg ?? .undefined("missing test argument"))
        case "ne", "!=": return !pyEquals(v, arg ?? .undefined("missing test argument"))
        case "lt", "<", "lessthan": return try compare("<", v, arg ?? .undefined("missing test argument"))
        case "le", "<=": return try compare("<=", v, arg ?? .undefined("missing test argument"))
        case "gt", ">", "greaterthan": return try compare(">", v, arg ?? .undefined("missing test argument"))
        case "ge", ">=": return try compare(">=", v, arg ?? .undefined("missing test argument"))
        case "in": return try contains(arg ?? .undefined("missing test argument"), v)
        case "sameas":
            guard let arg else { return false }
            switch (v, arg) {
            case (.none, .none): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.int(let x), .int(let y)): return x == y && x >= -5 && x <= 256
            case (.namespace(let x), .namespace(let y)): return x === y
            case (.function(let x), .function(let y)): return x === y
            default: return false
            }
        case "lower": return v.stringValue.map { s in s.lowercased() == s && s.contains { $0.isCased } } ?? false
        case "upper": return v.stringValue.map { s in s.uppercased() == s && s.contains { $0.isCased } } ?? false
        case "escaped": if case .markup = v { return true }; return false
        case "filter": return v.stringValue.map { knownFilters.contains($0) } ?? false
        case "test": return v.stringValue.map { knownTests.contains($0) } ?? false
        default: throw ChatTemplateError.unknownTest(name: name)
        }
    }

    // MARK: globals

    func globals(into s: Scope) {
        s.vars["range"] = method("range") { a in
            let ints = try a.positional.map { x -> Int in
                guard case .i(let i)? = numeric(x) else { throw ChatTemplateError.wrongType(operation: "range", expected: "an integer", got: x.typeName) }
                return i
            }
            var start = 0, stop = 0, step = 1
            switch ints.count {
            case 1: stop = ints[0]
            case 2: start = ints[0]; stop = ints[1]
            case 3: start = ints[0]; stop = ints[1]; step = ints[2]
            case 0: throw ChatTemplateError.wrongArguments(function: "range", reason: .tooFew(minimum: 1, given: 0))
            default: throw ChatTemplateError.wrongArguments(function: "range", reason: .tooMany(limit: 3, given: ints.count))
            }
            if step == 0 { throw ChatTemplateError.invalidValue(operation: "range", reason: "arg 3 (step) must not be zero") }
            let count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0)
                                 : (start > stop ? (start - stop - step - 1) / (-step) : 0)
            if count > 100_000 { throw ChatTemplateError.rangeTooLarge(count: count, limit: 100_000) }
            return .list((0..<count).map { .int(start + $0 * step) })
        }
        s.vars["namespace"] = method("namespace") { a in
            var d = PyDict()
            for p in a.positional {
                guard case .dict(let pd) = p else { throw ChatTemplateError.wrongType(operation: "namespace() positional argument", expected: "a mapping", got: p.typeName) }
                for (k, v) in zip(pd.keys, pd.values) { d.set(k, v) }
            }
            for (k, v) in a.keywords { d.set(.string(k), v) }
            return .namespace(Namespace(d))
        }
        s.vars["dict"] = method("dict") { a in
            var d = PyDict()
            for p in a.positional {
                guard case .dict(let pd) = p else { throw ChatTemplateError.wrongType(operation: "dict() positional argument", expected: "a mapping", got: p.typeName) }
                for (k, v) in zip(pd.keys, pd.values) { d.set(k, v) }
            }
            for (k, v) in a.keywords { d.set(.string(k), v) }
            return .dict(d)
        }
        s.vars["raise_exception"] = method("raise_exception") { a in
            throw ChatTemplateError.raised(pyStr(a.positional.first ?? a.keywords.first?.1 ?? .string("")))
        }
        s.vars["strftime_now"] = method("strftime_now") { [now = self.now] a in
            let p = try a.bind("strftime_now", ["format"])
            return .string(strftime(try self.requireString(try self.requireArgument(p[0], "strftime_now", "format"), "strftime_now(format)"), now ?? Date()))
        }
    }
}

extension Value {
    var isNoneValue: Bool { if case .none = self { return true }; return false }
}

/// Python's `datetime.now().strftime(fmt)` (local time, C locale), for the common directives.
func strftime(_ fmt: String, _ date: Date) -> String {
    var cal = Calendar(identifier: .gregorian)
    cal.timeZone = TimeZone.current
    let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday, .nanosecond], from: date)
    let year = c.year!, month = c.month!, day = c.day!, hour = c.hour!, minute = c.minute!, second = c.second!
    let wd = c.weekday! - 1  // 0 = Sunday
    let dayOfYear = cal.ordinality(of: .day, in: .year, for: date) ?? 1
    let months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
    let days = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
    func p2(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
    func p3(_ n: Int) -> String { String(repeating: "0", count: max(0, 3 - String(n).count)) + String(n) }
    var out = ""
    var it = Array(fmt.unicodeScalars)[...]
    while let ch = it.popFirst() {
        guard ch == "%", var d = it.popFirst() else { out.unicodeScalars.append(ch); continue }
        var noPad = false
        if d == "-", let n = it.popFirst() { noPad = true; d = n }
        let h12 = hour % 12 == 0 ? 12 : hour % 12
        func num(_ n: Int) -> String { noPad ? String(n) : p2(n) }
        switch d {
        case "a": out += String(days[wd].prefix(3))
        case "A": out += days[wd]
        case "b", "h": out += String(months[month - 1].prefix(3))
        case "B": out += months[month - 1]
        case "d": out += num(day)
        case "e": out += noPad ? String(day) : (day < 10 ? " \(day)" : "\(day)")
        case "m": out += num(month)
        case "y": out += num(year % 100)
        case "Y": out += String(year)
        case "H": out += num(hour)
        case "I": out += num(h12)
        case "M": out += num(minute)
        case "S": out += num(second)
        case "p": out += hour < 12 ? "AM" : "PM"
        case "j": out += noPad ? String(dayOfYear) : p3(dayOfYear)
        case "f": out += String(format: "%06d", (c.nanosecond ?? 0) / 1000)
        case "w": out += String(wd)
        case "u": out += String(wd == 0 ? 7 : wd)
        case "F": out += "\(year)-\(p2(month))-\(p2(day))"
        case "D": out += "\(p2(month))/\(p2(day))/\(p2(year % 100))"
        case "T": out += "\(p2(hour)):\(p2(minute)):\(p2(second))"
        case "R": out += "\(p2(hour)):\(p2(minute))"
        case "c": out += "\(days[wd].prefix(3)) \(months[month - 1].prefix(3)) \(day < 10 ? " \(day)" : "\(day)") \(p2(hour)):\(p2(minute)):\(p2(second)) \(year)"
        case "x": out += "\(p2(month))/\(p2(day))/\(p2(year % 100))"
        case "X": out += "\(p2(hour)):\(p2(minute)):\(p2(second))"
        case "n": out += "\n"
        case "t": out += "\t"
        case "%": out += "%"
        default: out += "%" + (noPad ? "-" : "") + String(d)
        }
    }
    return out
}
