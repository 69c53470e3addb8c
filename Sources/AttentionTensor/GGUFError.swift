/// Why a GGUF file (or a request on one) was refused. Every case names the file (`path`, nil
/// where a type-level call has no file) and, where there is one, the key or tensor; `description`
/// is one line, "model.gguf: tensor 'blk.0.attn_q.weight' runs past the end of the file (...)".
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case cannotWrite(path: String, reason: String)
    /// The file ends inside `what`, which starts at byte `offset`.
    case truncated(path: String, what: String, offset: Int)
    case badMagic(path: String, found: [UInt8])
    case unsupportedVersion(path: String, version: UInt32)
    /// A count (of tensors, metadata pairs, array elements) larger than the bytes left could hold.
    case absurdCount(path: String, what: String, count: UInt64, remaining: Int)
    /// A string length larger than the bytes left.
    case absurdLength(path: String, what: String, length: UInt64, offset: Int)
    case invalidUTF8(path: String, what: String, offset: Int)
    case unknownValueType(path: String, key: String, type: UInt32)
    case invalidBool(path: String, key: String, value: UInt8)
    case nestingTooDeep(path: String, key: String)
    case duplicateKey(path: String, key: String)
    /// `general.alignment` is not a positive power of two (or not an integer): `found` describes it.
    case badAlignment(path: String, found: String)
    case tooManyDimensions(path: String, tensor: String, count: UInt32)
    /// A dimension beyond Int, or a product (or byte count) that overflows.
    case overflowingShape(path: String, tensor: String, dims: [UInt64])
    case unknownTensorType(path: String, tensor: String, id: UInt32)
    /// `count` elements (or a row of them) are not whole blocks of `type`.
    case notWholeBlocks(path: String?, tensor: String?, type: GGMLType, count: Int)
    case notDequantizable(path: String?, tensor: String?, type: GGMLType)
    /// Quantisation into `type` was asked for and is not implemented (``GGMLType/isQuantizable``).
    case notQuantizable(type: GGMLType)
    case misaligned(path: String, tensor: String, offset: UInt64, alignment: Int)
    /// The tensor's bytes [dataStart + offset, + byteCount) are not inside the file.
    case tensorOutOfBounds(path: String, tensor: String, offset: UInt64, byteCount: Int, dataStart: Int, fileSize: Int)
    case duplicateTensor(path: String, tensor: String)
    case wrongType(path: String, key: String, found: String, expected: String)
    case missingKey(path: String, key: String)
    /// An integer value that does not fit the type asked for.
    case valueOutOfRange(path: String, key: String, value: String, expected: String)
    case rowsOutOfRange(path: String, tensor: String, rows: Range<Int>, rowCount: Int)
    case tensorNotFound(path: String, tensor: String)
    case overMemoryBudget(path: String, tensor: String, bytes: Int)

    public var description: String {
        switch self {
        case .cannotOpen(let p, let why): return "\(p): cannot open: \(why)"
        case .cannotWrite(let p, let why): return "\(p): cannot write: \(why)"
        case .truncated(let p, let what, let at): return "\(p): the file ends inside \(what) (at byte \(at)): truncated"
        case .badMagic(let p, let found):
            let hex = found.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: " ")
            return "\(p): not a GGUF file (starts with bytes \(hex), not 'GGUF')"
        case .unsupportedVersion(let p, let v):
            let why = v == 1 ? "GGUF v1 is not supported (only v2 and v3)"
                : v.byteSwapped == 2 || v.byteSwapped == 3 ? "version \(v): a big-endian GGUF file, which is not supported"
                : "unsupported GGUF version \(v) (only v2 and v3)"
            return "\(p): \(why)"
        case .absurdCount(let p, let what, let n, let left):
            return "\(p): \(what) count \(n) cannot fit in the \(left) bytes left in the file (corrupt or truncated)"
        case .absurdLength(let p, let what, let n, let at):
            return "\(p): \(what) at byte \(at) has length \(n), past the end of the file (corrupt or truncated)"
        case .invalidUTF8(let p, let what, let at): return "\(p): \(what) at byte \(at) is not valid UTF-8"
        case .unknownValueType(let p, let k, let t): return "\(p): metadata \(gguf_quoted(k)) has unknown value type \(t) (known: 0-12)"
        case .invalidBool(let p, let k, let v): return "\(p): metadata \(gguf_quoted(k)) holds bool byte \(v), neither 0 nor 1"
        case .nestingTooDeep(let p, let k):
            return "\(p): metadata \(gguf_quoted(k)) nests arrays more than \(GGUFFile.maxArrayNesting) deep"
        case .duplicateKey(let p, let k): return "\(p): metadata key \(gguf_quoted(k)) appears twice"
        case .badAlignment(let p, let found):
            return "\(p): general.alignment is \(found), not a power of two of at most 2^30"
        case .tooManyDimensions(let p, let t, let n):
            return "\(p): tensor \(gguf_quoted(t)) has \(n) dimensions (at most \(GGUFFile.maxDimensions))"
        case .overflowingShape(let p, let t, let dims):
            return "\(p): tensor \(gguf_quoted(t)) shape \(dims) overflows any addressable size"
        case .unknownTensorType(let p, let t, let id):
            return "\(p): tensor \(gguf_quoted(t)) has unknown ggml type id \(id)"
        case .notWholeBlocks(let p, let t, let type, let n):
            return gguf_prefix(p, t) + "\(n) elements are not whole blocks of \(type.name) (\(type.blockSize) elements per block)"
        case .notDequantizable(let p, let t, let type):
            return gguf_prefix(p, t) + "type \(type.name) cannot be dequantised (supported: "
                + GGMLType.allCases.filter(\.isDequantizable).map(\.name).joined(separator: ", ") + ")"
        case .notQuantizable(let type):
            return "quantising into \(type.name) is not supported (supported: "
                + GGMLType.allCases.filter(\.isQuantizable).map(\.name).joined(separator: ", ") + ")"
        case .misaligned(let p, let t, let off, let a):
            return "\(p): tensor \(gguf_quoted(t)) data offset \(off) is not a multiple of the alignment \(a)"
        case .tensorOutOfBounds(let p, let t, let off, let n, let start, let size):
            return "\(p): tensor \(gguf_quoted(t)) runs past the end of the file (\(n) bytes at data offset \(off), data starting at byte \(start), file \(size) bytes)"
        case .duplicateTensor(let p, let t): return "\(p): tensor \(gguf_quoted(t)) appears twice"
        case .wrongType(let p, let k, let found, let expected):
            return "\(p): metadata \(gguf_quoted(k)) is \(found), expected \(expected)"
        case .missingKey(let p, let k): return "\(p): metadata key \(gguf_quoted(k)) is missing"
        case .valueOutOfRange(let p, let k, let v, let expected):
            return "\(p): metadata \(gguf_quoted(k)) value \(v) does not fit \(expected)"
        case .rowsOutOfRange(let p, let t, let rows, let n):
            return "\(p): tensor \(gguf_quoted(t)) rows \(rows.lowerBound)..<\(rows.upperBound) are outside its \(n) rows"
        case .tensorNotFound(let p, let t): return "\(p): no tensor named \(gguf_quoted(t))"
        case .overMemoryBudget(let p, let t, let n):
            return "\(p): tensor \(gguf_quoted(t)) needs \(n) bytes (\(n >> 20) MiB) as float32, over the memory budget (MemoryBudget)"
        }
    }
}

private func gguf_prefix(_ path: String?, _ tensor: String?) -> String {
    (path.map { "\($0): " } ?? "") + (tensor.map { "tensor \(gguf_quoted($0)): " } ?? "")
}

/// A name in single quotes for a one-line message: control characters escaped, long names cut.
func gguf_quoted(_ s: String) -> String {
    var out = ""
    for (n, scalar) in s.unicodeScalars.enumerated() {
        if n == 120 { out += "…"; break }
        out += scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar == "\u{2028}" || scalar == "\u{2029}"
            ? scalar.escaped(asASCII: true) : String(scalar)
    }
    return "'" + out + "'"
}
