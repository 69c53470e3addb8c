import AttentionTensor
import Foundation

/// JSON text for the configs this project writes. Foundation's writer prints a Double with an
/// integral value without a fraction (`0.0` as `0`), and transformers' strictly typed configs
/// refuse an integer where a float belongs (`router_jitter_noise`), so floats are always written
/// with a fraction or an exponent here. Keys are sorted; two-space indentation.
func jsonText(_ value: Any, indent: String = "") -> String {
    let inner = indent + "  "
    switch value {
    case is NSNull: return "null"
    case let b as Bool where type(of: value) == Bool.self: return b ? "true" : "false"
    case let i as Int where type(of: value) == Int.self: return String(i)
    case let u as UInt64 where type(of: value) == UInt64.self: return String(u)   // seeds: every bit kept
    case let d as Double where type(of: value) == Double.self:
        guard d.isFinite else { return "null" }
        let s = "\(d)"   // shortest round-trip form: "0.0", "1e-05", "10000.0"
        return s.contains(".") || s.contains("e") ? s : s + ".0"
    case let s as String: return SafeTensors.jsonString(s)
    case let a as [Any]:
        if a.isEmpty { return "[]" }
        return "[\n" + a.map { inner + jsonText($0, indent: inner) }.joined(separator: ",\n") + "\n" + indent + "]"
    case let o as [String: Any]:
        if o.isEmpty { return "{}" }
        return "{\n" + o.keys.sorted().map { inner + jsonText($0) + ": " + jsonText(o[$0]!, indent: inner) }
            .joined(separator: ",\n") + "\n" + indent + "}"
    default:
        preconditionFailure("jsonText: unsupported value \(type(of: value))")
    }
}
