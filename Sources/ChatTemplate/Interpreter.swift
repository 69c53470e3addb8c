import Foundation

final class Scope {
    var vars: [String: Value] = [:]
    let parent: Scope?
    init(parent: Scope?) { self.parent = parent }

    func lookup(_ name: String) -> Value? {
        var s: Scope? = self
        while let c = s {
            if let v = c.vars[name] { return v }
            s = c.parent
        }
        return nil
    }
}

enum Flow { case normal, breakLoop, continueLoop }

func undefinedError(_ v: Value) -> ChatTemplateError {
    if case .undefined(let hint) = v { return .undefined(hint: hint) }
    return .undefined(hint: "value is undefined")
}

final class Interpreter {
    var out = ""
    var callDepth = 0
    let now: Date?
    var loopDepth = 0
    static let maxOutput = 64 << 20

    init(now: Date?) { self.now = now }

    func write(_ s: String) throws {
        out += s
        if out.utf8.count > Interpreter.maxOutput { throw ChatTemplateError.outputTooLarge(limit: Interpreter.maxOutput) }
    }

    // MARK: statements

    func exec(_ nodes: [Node], _ scope: Scope) throws -> Flow {
        for n in nodes {
            let f = try exec(n, scope)
            if f != .normal { return f }
        }
        return .normal
    }

    func capture(_ body: [Node], _ scope: Scope) throws -> String {
        let saved = out
        out = ""
        defer { out = saved }
        _ = try exec(body, scope)
        return out
    }

    func exec(_ node: Node, _ scope: Scope) throws -> Flow {
        switch node {
        case .text(let s):
            try write(s)
        case .output(let e, _):
            try write(pyStr(try eval(e, scope)))
        case .ifs(let branches, let elseBody):
            for (c, body) in branches where truthy(try eval(c, scope)) {
                return try exec(body, scope)
            }
            return try exec(elseBody, scope)
        case .forLoop(let target, let iterExpr, let condition, let body, let elseBody, _, _):
            var items = try iterate(try eval(iterExpr, scope))
            if let condition {
                var kept: [Value] = []
                for item in items {
                    let s = Scope(parent: scope)
                    try assign(target, item, s)
                    if truthy(try eval(condition, s)) { kept.append(item) }
                }
                items = kept
            }
            if items.isEmpty { return try exec(elseBody, scope) }
            let info = LoopInfo(items: items, depth0: loopDepth)
            loopDepth += 1
            defer { loopDepth -= 1 }
            for (i, item) in items.enumerated() {
                info.index0 = i
                let s = Scope(parent: scope)
                s.vars["loop"] = .loop(info)
                try assign(target, item, s)
                let f = try exec(body, s)
                if f == .breakLoop { break }
            }
        case .set(let target, let e, _):
            try assign(target, try eval(e, scope), scope)
        case .setBlock(let target, let filters, let body, _):
            var v: Value = .markup(try capture(body, scope))
            for f in filters { v = try applyFilter(f.name, v, try evalArgs(f.args, f.kwargs, scope)) }
            try assign(target, v, scope)
        case .macro(let name, let params, let body):
            // The macro lives in the scope that defines it: capturing that scope weakly keeps the
            // two from owning each other (a cycle that would leak the template's tree).
            let fn = Callable(name) { [unowned self, weak scope] args in
                guard let scope else { throw ChatTemplateError.invalidValue(operation: "macro '\(name)'", reason: "called after the block that defines it ended") }
                return try self.callMacro(name, params, body, scope, args)
            }
            scope.vars[name] = .function(fn)
        case .filterBlock(let filters, let body):
            var v: Value = .markup(try capture(body, scope))
            for f in filters { v = try applyFilter(f.name, v, try evalArgs(f.args, f.kwargs, scope)) }
            try write(pyStr(v))
        case .generation(let body):
            return try exec(body, scope)
        case .breakLoop:
            return .breakLoop
        case .continueLoop:
            return .continueLoop
        }
        return .normal
    }

    func callMacro(_ name: String, _ params: [MacroParam], _ body: [Node], _ defScope: Scope, _ args: Args) throws -> Value {
        callDepth += 1
        defer { callDepth -= 1 }
        if callDepth > 64 { throw ChatTemplateError.nestingTooDeep(what: "macro calls", limit: 64) }
        let s = Scope(parent: defScope)
        if args.positional.count > params.count {
            throw ChatTemplateError.wrongArguments(function: name, reason: .tooMany(limit: params.count, given: args.positional.count))
        }
        var bound = [Value?](repeating: nil, count: params.count)
        for (i, v) in args.positional.enumerated() { bound[i] = v }
        for (k, v) in args.keywords {
            guard let i = params.firstIndex(where: { $0.name == k }) else {
                throw ChatTemplateError.wrongArguments(function: name, reason: .unexpectedKeyword(name: k))
            }
            bound[i] = v
        }
        for (i, p) in params.enumerated() {
            if let v = bound[i] { s.vars[p.name] = v }
            else if let d = p.defaultValue { s.vars[p.name] = try eval(d, s) }
            else { s.vars[p.name] = .undefined("parameter '\(p.name)' was not provided") }
        }
        return .markup(try capture(body, s))
    }

    func assign(_ target: Target, _ value: Value, _ scope: Scope) throws {
        switch target {
        case .name(let n):
            scope.vars[n] = value
        case .attr(let n, let a, _):
            let v = scope.lookup(n) ?? .undefined("'\(n)' is undefined")
            guard case .namespace(let ns) = v else {
                throw ChatTemplateError.wrongType(operation: "set \(n).\(a)", expected: "a namespace", got: v.typeName)
            }
            ns.dict.set(.string(a), value)
        case .tuple(let ts):
            let items = try iterate(value)
            guard items.count == ts.count else {
                throw ChatTemplateError.invalidValue(
                    operation: "unpacking",
                    reason: "\(items.count > ts.count ? "too many" : "not enough") values (expected \(ts.count), got \(items.count))")
            }
            for (t, v) in zip(ts, items) { try assign(t, v, scope) }
        }
    }

    func iterate(_ v: Value) throws -> [Value] {
        switch v {
        case .list(let l), .tuple(let l): return l
        case .dict(let d): return d.keys
        case .namespace(let n): return n.dict.keys
        case .string(let s), .markup(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        default: throw ChatTemplateError.wrongType(operation: "iteration", expected: "an iterable", got: v.typeName)
        }
    }

    // MARK: expressions

    func evalArgs(_ args: [Expr], _ kwargs: [Keyword], _ scope: Scope) throws -> Args {
        Args(positional: try args.map { try eval($0, scope) }, keywords: try kwargs.map { ($0.name, try eval($0.value, scope)) })
    }

    func eval(_ e: Expr, _ scope: Scope) throws -> Value {
        switch e {
        case .literal(let l):
            switch l {
            case .none: return .none
            case .bool(let b): return .bool(b)
            case .int(let i): return .int(i)
            case .double(let d): return .double(d)
            case .string(let s): return .string(s)
            }
        case .name(let n, _):
            return scope.lookup(n) ?? .undefined("'\(n)' is undefined")
        case .list(let items):
            return .list(try items.map { try eval($0, scope) })
        case .tuple(let items):
            return .tuple(try items.map { try eval($0, scope) })
        case .dict(let pairs):
            var d = PyDict()
            for (k, v) in pairs {
                let key = try eval(k, scope)
                switch key {
                case .list, .dict, .namespace, .undefined:
                    throw ChatTemplateError.wrongType(operation: "dict key", expected: "a hashable value", got: key.typeName)
                default: break
                }
                d.set(key, try eval(v, scope))
            }
            return .dict(d)
        case .attr(let o, let name, _):
            return try getAttr(try eval(o, scope), name)
        case .item(let o, let k, _):
            return try getItem(try eval(o, scope), try eval(k, scope))
        case .slice(let o, let a, let b, let c, _):
            let v = try eval(o, scope)
            return try slice(v, try a.map { try eval($0, scope) }, try b.map { try eval($0, scope) }, try c.map { try eval($0, scope) })
        case .call(let f, let args, let kwargs, _):
            let fv = try eval(f, scope)
            let a = try evalArgs(args, kwargs, scope)
            switch fv {
            case .function(let c): return try c.fn(a)
            case .undefined: throw undefinedError(fv)
            default: throw ChatTemplateError.wrongType(operation: "call", expected: "a callable", got: fv.typeName)
            }
        case .filter(let v, let name, let args, let kwargs, _):
            let value = try eval(v, scope)
            return try applyFilter(name, value, try evalArgs(args, kwargs, scope))
        case .test(let v, let name, let args, let kwargs, let negated, _):
            let value = try eval(v, scope)
            let r = try applyTest(name, value, try evalArgs(args, kwargs, scope))
            return .bool(negated ? !r : r)
        case .neg(let x, _):
            let v = try eval(x, scope)
            switch numeric(v) {
            case .i(let i)?:
                let (r, o) = Int(0).subtractingReportingOverflow(i)
                if o { throw ChatTemplateError.integerOverflow(operator: "unary -") }
                return .int(r)
            case .d(let d)?: return .double(-d)
            case nil:
                if v.isUndefined { throw undefinedError(v) }
                throw ChatTemplateError.wrongType(operation: "unary -", expected: "a number", got: v.typeName)
            }
        case .pos(let x, _):
            let v = try eval(x, scope)
            switch numeric(v) {
            case .i(let i)?: return .int(i)
            case .d(let d)?: return .double(d)
            case nil:
                if v.isUndefined { throw undefinedError(v) }
                throw ChatTemplateError.wrongType(operation: "unary +", expected: "a number", got: v.typeName)
            }
        case .not(let x):
            return .bool(!truthy(try eval(x, scope)))
        case .and(let a, let b):
            let l = try eval(a, scope)
            return truthy(l) ? try eval(b, scope) : l
        case .or(let a, let b):
            let l = try eval(a, scope)
            return truthy(l) ? l : try eval(b, scope)
        case .binary(let op, let a, let b, _):
            return try binary(op, try eval(a, scope), try eval(b, scope))
        case .compare(let first, let ops, _):
            var l = try eval(first, scope)
            for (op, re) in ops {
                let r = try eval(re, scope)
                if !(try compare(op, l, r)) { return .bool(false) }
                l = r
            }
            return .bool(true)
        case .cond(let then, let c, let other):
            if truthy(try eval(c, scope)) { return try eval(then, scope) }
            if let other { return try eval(other, scope) }
            return .undefined("the inline if-expression evaluated to false and no else section was defined")
        }
    }

    // MARK: operators

    func binary(_ op: String, _ a: Value, _ b: Value) throws -> Value {
        if op == "~" { return .string(pyStr(a) + pyStr(b)) }
        if a.isUndefined { throw undefinedError(a) }
        if b.isUndefined { throw undefinedError(b) }
        let bad = ChatTemplateError.unsupportedOperands(operator: op, left: a.typeName, right: b.typeName)
        if let x = numeric(a), let y = numeric(b) {
            switch (x, y) {
            case (.i(let p), .i(let q)):
                switch op {
                case "+": let (r, o) = p.addingReportingOverflow(q); if o { throw ChatTemplateError.integerOverflow(operator: "+") }; return .int(r)
                case "-": let (r, o) = p.subtractingReportingOverflow(q); if o { throw ChatTemplateError.integerOverflow(operator: "-") }; return .int(r)
                case "*": let (r, o) = p.multipliedReportingOverflow(by: q); if o { throw ChatTemplateError.integerOverflow(operator: "*") }; return .int(r)
                case "/":
                    if q == 0 { throw ChatTemplateError.divisionByZero(operator: "/") }
                    return .double(Double(p) / Double(q))
                case "//":
                    if q == 0 { throw ChatTemplateError.divisionByZero(operator: "//") }
                    if p == Int.min && q == -1 { throw ChatTemplateError.integerOverflow(operator: "//") }
                    var r = p / q
                    if (p % q != 0) && ((p < 0) != (q < 0)) { r -= 1 }
                    return .int(r)
                case "%":
                    if q == 0 { throw ChatTemplateError.divisionByZero(operator: "%") }
                    if q == -1 { return .int(0) }
                    var r = p % q
                    if r != 0 && ((r < 0) != (q < 0)) { r += q }
                    return .int(r)
                case "**":
                    if q < 0 { return .double(pow(Double(p), Double(q))) }
                    var result = 1, base = p, e = q
                    while e > 0 {
                        if e & 1 == 1 { let (r, o) = result.multipliedReportingOverflow(by: base); if o { throw ChatTemplateError.integerOverflow(operator: "**") }; result = r }
                        e >>= 1
                        if e > 0 { let (r, o) = base.multipliedReportingOverflow(by: base); if o { throw ChatTemplateError.integerOverflow(operator: "**") }; base = r }
                    }
                    return .int(result)
                default: throw bad
                }
            default:
                let p = asDouble(x), q = asDouble(y)
                switch op {
                case "+": return .double(p + q)
                case "-": return .double(p - q)
                case "*": return .double(p * q)
                case "/": if q == 0 { throw ChatTemplateError.divisionByZero(operator: "/") }; return .double(p / q)
                case "//": if q == 0 { throw ChatTemplateError.divisionByZero(operator: "//") }; return .double((p / q).rounded(.down))
                case "%":
                    if q == 0 { throw ChatTemplateError.divisionByZero(operator: "%") }
                    var r = fmod(p, q)
                    if r != 0 && ((r < 0) != (q < 0)) { r += q }
                    return .double(r)
                case "**": return .double(pow(p, q))
                default: throw bad
                }
            }
        }
        switch (op, a, b) {
        case ("+", _, _) where a.stringValue != nil && b.stringValue != nil:
            return .string(a.stringValue! + b.stringValue!)
        case ("+", .list(let x), .list(let y)): return .list(x + y)
        case ("+", .tuple(let x), .tuple(let y)): return .tuple(x + y)
        case ("*", _, _):
            var seq = a, count = b
            if numeric(a) != nil { seq = b; count = a }
            guard case .i(let n)? = numeric(count) else { throw bad }
            let k = max(n, 0)
            switch seq {
            case .string(let s), .markup(let s):
                if s.utf8.count * k > Interpreter.maxOutput { throw ChatTemplateError.outputTooLarge(limit: Interpreter.maxOutput) }
                return .string(String(repeating: s, count: k))
            case .list(let l):
                if l.count * k > 1_000_000 {
                    throw ChatTemplateError.invalidValue(operation: "*", reason: "list repetition too large (\(l.count) items times \(k), over 1000000)")
                }
                return .list(Array([[Value]](repeating: l, count: k).joined()))
            default: throw bad
            }
        case ("%", _, _) where a.stringValue != nil:
            return .string(try percentFormat(a.stringValue!, b))
        default:
            throw bad
        }
    }

    /// `'...' % value` with %s, %d, %r and %% only.
    func percentFormat(_ fmt: String, _ arg: Value) throws -> String {
        var args: [Value]
        if case .tuple(let t) = arg { args = t } else { args = [arg] }
        var out = ""
        var it = fmt.unicodeScalars.makeIterator()
        while let c = it.next() {
            if c != "%" { out.unicodeScalars.append(c); continue }
            guard let d = it.next() else { throw ChatTemplateError.invalidValue(operation: "%", reason: "incomplete format") }
            if d == "%" { out += "%"; continue }
            guard !args.isEmpty else { throw ChatTemplateError.invalidValue(operation: "%", reason: "not enough arguments for format string") }
            let v = args.removeFirst()
            switch d {
            case "s": out += pyStr(v)
            case "r": out += pyRepr(v)
            case "d", "i":
                guard let n = numeric(v) else { throw ChatTemplateError.wrongType(operation: "%\(d) format", expected: "a number", got: v.typeName) }
                switch n { case .i(let i): out += String(i); case .d(let x): out += String(Int(x.rounded(.towardZero))) }
            default: throw ChatTemplateError.invalidValue(operation: "%", reason: "unsupported format character '\(d)'")
            }
        }
        if !args.isEmpty { throw ChatTemplateError.invalidValue(operation: "%", reason: "not all arguments converted during string formatting") }
        return out
    }

    func compare(_ op: String, _ a: Value, _ b: Value) throws -> Bool {
        switch op {
        case "==": return pyEquals(a, b)
        case "!=": return !pyEquals(a, b)
        case "in": return try contains(b, a)
        case "notin": return !(try contains(b, a))
        default:
            let c = try order(a, b, op)
            switch op {
            case "<": return c < 0
            case ">": return c > 0
            case "<=": return c <= 0
            default: return c >= 0
            }
        }
    }

    func order(_ a: Value, _ b: Value, _ op: String) throws -> Int {
        if let x = numeric(a), let y = numeric(b) {
            if case .i(let p) = x, case .i(let q) = y { return p < q ? -1 : (p == q ? 0 : 1) }
            let p = asDouble(x), q = asDouble(y)
            if p.isNaN || q.isNaN { return op == "<" || op == "<=" ? 1 : -1 }
            return p < q ? -1 : (p == q ? 0 : 1)
        }
        if let s = a.stringValue, let t = b.stringValue {
            let x = Array(s.unicodeScalars.map(\.value)), y = Array(t.unicodeScalars.map(\.value))
            return x == y ? 0 : (x.lexicographicallyPrecedes(y) ? -1 : 1)
        }
        switch (a, b) {
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            for (p, q) in zip(x, y) where !pyEquals(p, q) { return try order(p, q, op) }
            return x.count == y.count ? 0 : (x.count < y.count ? -1 : 1)
        default:
            if a.isUndefined { throw undefinedError(a) }
            if b.isUndefined { throw undefinedError(b) }
            throw ChatTemplateError.unsupportedOperands(operator: op, left: a.typeName, right: b.typeName)
        }
    }

    func contains(_ container: Value, _ item: Value) throws -> Bool {
        switch container {
        case .string(let s), .markup(let s):
            guard let t = item.stringValue else {
                throw ChatTemplateError.wrongType(operation: "'in <string>'", expected: "a str left operand", got: item.typeName)
            }
            return t.isEmpty || s.contains(t)
        case .list(let l), .tuple(let l): return l.contains { pyEquals($0, item) }
        case .dict(let d): return d.index(of: item) != nil
        case .namespace(let n): return n.dict.index(of: item) != nil
        case .undefined: return false
        default: throw ChatTemplateError.wrongType(operation: "'in'", expected: "an iterable right operand", got: container.typeName)
        }
    }

    // MARK: attributes, items, slices

    func getAttr(_ obj: Value, _ name: String) throws -> Value {
        switch obj {
        case .undefined: throw undefinedError(obj)
        case .dict(let d):
            if let m = dictMethod(d, name) { return m }
            return d[.string(name)] ?? .undefined("'dict object' has no attribute '\(name)'")
        case .string(let s), .markup(let s):
            if let m = stringMethod(s, name) { return m }
            return .undefined("'str object' has no attribute '\(name)'")
        case .list(let l), .tuple(let l):
            if let m = listMethod(l, name) { return m }
            return .undefined("'\(obj.typeName) object' has no attribute '\(name)'")
        case .namespace(let n):
            return n.dict[.string(name)] ?? .undefined("'Namespace object' has no attribute '\(name)'")
        case .loop(let info):
            return loopAttr(info, name)
        default:
            return .undefined("'\(obj.typeName) object' has no attribute '\(name)'")
        }
    }

    func loopAttr(_ info: LoopInfo, _ name: String) -> Value {
        let n = info.items.count, i = info.index0
        switch name {
        case "index": return .int(i + 1)
        case "index0": return .int(i)
        case "revindex": return .int(n - i)
        case "revindex0": return .int(n - i - 1)
        case "first": return .bool(i == 0)
        case "last": return .bool(i == n - 1)
        case "length": return .int(n)
        case "depth": return .int(info.depth0 + 1)
        case "depth0": return .int(info.depth0)
        case "previtem": return i > 0 ? info.items[i - 1] : .undefined("there is no previous item")
        case "nextitem": return i + 1 < n ? info.items[i + 1] : .undefined("there is no next item")
        case "cycle":
            return .function(Callable("cycle") { args in
                guard !args.positional.isEmpty else {
                    throw ChatTemplateError.wrongArguments(function: "loop.cycle", reason: .tooFew(minimum: 1, given: 0))
                }
                return args.positional[info.index0 % args.positional.count]
            })
        case "changed":
            return .function(Callable("changed") { args in
                let v = args.positional
                if let last = info.lastChanged, last.count == v.count, zip(last, v).allSatisfy({ pyEquals($0, $1) }) { return .bool(false) }
                info.lastChanged = v
                return .bool(true)
            })
        default: return .undefined("'LoopContext object' has no attribute '\(name)'")
        }
    }

    func pyIndex(_ k: Value, _ count: Int) -> Int? {
        guard case .i(var i)? = numeric(k) else { return nil }
        if i < 0 { i += count }
        return (i >= 0 && i < count) ? i : nil
    }

    func getItem(_ obj: Value, _ key: Value) throws -> Value {
        switch obj {
        case .undefined: throw undefinedError(obj)
        case .list(let l), .tuple(let l):
            if let i = pyIndex(key, l.count) { return l[i] }
        case .string(let s), .markup(let s):
            if numeric(key) != nil {
                let u = Array(s.unicodeScalars)
                if let i = pyIndex(key, u.count) { return .string(String(u[i])) }
            }
        case .dict(let d):
            if let v = d[key] { return v }
        default: break
        }
        if case .string(let name) = key, case .dict(let d) = obj {
            if let m = dictMethod(d, name) { return m }
        } else if case .string(let name) = key {
            switch obj {
            case .loop, .namespace, .string, .markup, .list, .tuple: return try getAttr(obj, name)
            default: break
            }
        }
        return .undefined("'\(obj.typeName) object' has no element \(pyRepr(key))")
    }

    func slice(_ v: Value, _ a: Value?, _ b: Value?, _ c: Value?) throws -> Value {
        func intOrNil(_ x: Value?) throws -> Int? {
            guard let x else { return nil }
            if case .none = x { return nil }
            guard case .i(let i)? = numeric(x) else { throw ChatTemplateError.wrongType(operation: "slice index", expected: "an integer or None", got: x.typeName) }
            return i
        }
        let step = try intOrNil(c) ?? 1
        if step == 0 { throw ChatTemplateError.invalidValue(operation: "slice", reason: "step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            var start = try intOrNil(a), stop = try intOrNil(b)
            func clamp(_ x: Int, _ lo: Int, _ hi: Int) -> Int { min(max(x, lo), hi) }
            if step > 0 {
                var s = start ?? 0, e = stop ?? n
                if s < 0 { s += n }; if e < 0 { e += n }
                s = clamp(s, 0, n); e = clamp(e, 0, n)
                return s < e ? Array(stride(from: s, to: e, by: step)) : []
            } else {
                if let x = start { start = x < 0 ? x + n : x }
                if let x = stop { stop = x < 0 ? x + n : x }
                let s = clamp(start ?? (n - 1), -1, n - 1)
                let e = clamp(stop ?? -1, -1, n - 1)
                return s > e ? Array(stride(from: s, to: e, by: step)) : []
            }
        }
        switch v {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .tuple(let l): return .tuple(try indices(l.count).map { l[$0] })
        case .string(let s), .markup(let s):
            let u = Array(s.unicodeScalars)
            var r = String.UnicodeScalarView()
            for i in try indices(u.count) { r.append(u[i]) }
            return .string(String(r))
        case .undefined: throw undefinedError(v)
        default: throw ChatTemplateError.wrongType(operation: "slice", expected: "a subscriptable value", got: v.typeName)
        }
    }
}
