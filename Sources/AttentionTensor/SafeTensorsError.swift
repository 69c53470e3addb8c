/// What is wrong with a `.safetensors` file, a tensor asked of it, or a write.
public enum SafeTensorsProblem: Equatable, Sendable {
    // MARK: The file

    case cannotOpen(String)
    /// Reading failed, or the file shrank while it was read.
    case cannotRead(String)
    case cannotWrite(String)

    // MARK: The header length and the header

    /// The file is shorter than the 8-byte header length.
    case truncatedHeaderLength(fileSize: Int)
    /// The header length is over ``SafeTensors/maxHeaderBytes`` (as the reference implementation refuses).
    case headerTooLarge(length: UInt64)
    /// The header length runs past the end of the file (`available` = file size − 8).
    case headerPastEnd(length: UInt64, available: Int)
    case headerNotUTF8
    /// The header is not JSON; `offset` counts from the first header byte (file byte 8).
    case malformedJSON(offset: Int, reason: String)
    /// The header is JSON but not an object; `found` says what it is.
    case headerNotObject(found: String)
    /// Two entries have the same tensor name.
    case duplicateName(String)
    /// `__metadata__` is not an object (`key` nil) or the value of `key` is not a string.
    case malformedMetadata(key: String?)
    case duplicateMetadataKey(String)

    // MARK: One tensor's entry

    case entryNotObject(tensor: String, found: String)
    case missingField(tensor: String, field: String)
    /// A field other than `dtype`, `shape` and `data_offsets`.
    case unexpectedField(tensor: String, field: String)
    case duplicateField(tensor: String, field: String)
    /// `dtype` is not a string, `shape` not an array, or `data_offsets` not an array of two.
    case wrongFieldType(tensor: String, field: String, found: String)
    /// A dtype not in ``SafeTensors/DType``: its size, so the layout, cannot be checked.
    case unknownDType(tensor: String, dtype: String)
    /// A shape entry that is not a non-negative integer fitting `Int`.
    case invalidDimension(tensor: String, found: String)
    /// The shape has more than ``SafeTensors/maxRank`` dimensions.
    case tooManyDimensions(tensor: String)
    /// The shape's element count overflows any addressable size.
    case shapeOverflow(tensor: String, shape: [Int])
    /// A data offset that is not a non-negative integer fitting `Int`.
    case invalidOffset(tensor: String, found: String)
    case offsetsReversed(tensor: String, begin: Int, end: Int)
    /// The offsets run past the end of the data buffer (the bytes after the header).
    case offsetsPastEnd(tensor: String, begin: Int, end: Int, bufferSize: Int)
    /// A sub-byte dtype whose elements do not fill whole bytes (F4 with an odd count, say).
    case partialByte(tensor: String, dtype: SafeTensors.DType, shape: [Int])
    /// The offsets span a different number of bytes than dtype and shape need.
    case byteCountMismatch(tensor: String, dtype: SafeTensors.DType, shape: [Int], begin: Int, end: Int)

    // MARK: The buffer as a whole

    /// Two tensors' byte ranges overlap (an empty range inside another's counts, as in the reference).
    case overlappingTensors(String, String)
    /// Buffer bytes `begin..<end` belong to no tensor: the format requires the tensors to cover
    /// the buffer contiguously, with no gap and nothing after the last one.
    case unreferencedBytes(begin: Int, end: Int)

    // MARK: Reading a tensor

    case tensorNotFound(String)
    /// ``SafeTensorsArchive/tensor(_:)`` reads F32, F16, BF16 and F64 only.
    case unsupportedDType(tensor: String, dtype: SafeTensors.DType)
    /// ``SafeTensorsArchive/integers(_:)`` reads integer and BOOL tensors only.
    case notIntegers(tensor: String, dtype: SafeTensors.DType)
    /// A finite F64 element (at row-major `index`) that rounds to infinity as Float32.
    case outOfFloatRange(tensor: String, index: Int, value: Double)
    /// A U64 element above `Int.max`.
    case outOfIntRange(tensor: String, index: Int, value: UInt64)
    /// Converting would allocate `bytes`, over ``MemoryBudget`` (`tensor` nil: the whole file or all tensors).
    case overMemoryBudget(tensor: String?, bytes: Int)

    // MARK: Writing

    /// A name that is empty or `__metadata__`.
    case invalidName(String)
}

/// A typed `.safetensors` error naming the file and the problem.
public struct SafeTensorsError: Error, Equatable, CustomStringConvertible, Sendable {
    public let path: String
    public let problem: SafeTensorsProblem

    public init(path: String, problem: SafeTensorsProblem) {
        self.path = path
        self.problem = problem
    }

    public var description: String {
        let what: String
        switch problem {
        case .cannotOpen(let why): what = "cannot open: \(why)"
        case .cannotRead(let why): what = "cannot read: \(why)"
        case .cannotWrite(let why): what = "cannot write: \(why)"
        case .truncatedHeaderLength(let size):
            what = "file is \(size) bytes, shorter than the 8-byte header length that starts a .safetensors file"
        case .headerTooLarge(let n):
            what = "header length \(n) bytes is over the \(SafeTensors.maxHeaderBytes)-byte limit (not a .safetensors file, or a corrupt one)"
        case .headerPastEnd(let n, let available):
            what = "header length \(n) bytes runs past the end of the file (\(available) bytes after the length): truncated or not a .safetensors file"
        case .headerNotUTF8: what = "header is not valid UTF-8"
        case .malformedJSON(let offset, let reason): what = "header is not valid JSON at byte \(offset) of the header: \(reason)"
        case .headerNotObject(let found): what = "header is \(found), not a JSON object of tensor entries"
        case .duplicateName(let name): what = "tensor \(quoted(name)) appears twice in the header"
        case .malformedMetadata(nil): what = "'__metadata__' must be an object of strings"
        case .malformedMetadata(let key?): what = "'__metadata__' value of \(quoted(key)) is not a string"
        case .duplicateMetadataKey(let key): what = "'__metadata__' key \(quoted(key)) appears twice"
        case .entryNotObject(let t, let found): what = "tensor \(quoted(t)): entry is \(found), not an object"
        case .missingField(let t, let f): what = "tensor \(quoted(t)): entry has no '\(f)'"
        case .unexpectedField(let t, let f):
            what = "tensor \(quoted(t)): unexpected field \(quoted(f)) (an entry has only 'dtype', 'shape' and 'data_offsets')"
        case .duplicateField(let t, let f): what = "tensor \(quoted(t)): field \(quoted(f)) appears twice"
        case .wrongFieldType(let t, let f, let found):
            let expected = f == "dtype" ? "a string" : f == "shape" ? "an array of integers" : "two integers [begin, end]"
            what = "tensor \(quoted(t)): '\(f)' is \(found), expected \(expected)"
        case .unknownDType(let t, let d):
            what = "tensor \(quoted(t)): unknown dtype \(quoted(d)) (known: \(SafeTensors.DType.allCases.map(\.rawValue).joined(separator: ", ")))"
        case .invalidDimension(let t, let found): what = "tensor \(quoted(t)): shape entry \(found) is not a non-negative integer"
        case .tooManyDimensions(let t):
            what = "tensor \(quoted(t)): shape has more than \(SafeTensors.maxRank) dimensions (NumPy's limit)"
        case .shapeOverflow(let t, let shape): what = "tensor \(quoted(t)): shape \(shape) overflows any addressable size"
        case .invalidOffset(let t, let found): what = "tensor \(quoted(t)): data offset \(found) is not a non-negative integer"
        case .offsetsReversed(let t, let b, let e): what = "tensor \(quoted(t)): data_offsets [\(b), \(e)] end before they begin"
        case .offsetsPastEnd(let t, let b, let e, let size):
            what = "tensor \(quoted(t)): data_offsets [\(b), \(e)] run past the end of the \(size)-byte data buffer (truncated file?)"
        case .byteCountMismatch(let t, let dtype, let shape, let b, let e):
            let needed = bitCount(dtype, shape).map { String($0 / 8) } ?? "more than \(Int.max)"
            let held = e.subtractingReportingOverflow(b)
            what = "tensor \(quoted(t)): data_offsets [\(b), \(e)] hold \(held.overflow ? "?" : String(held.partialValue)) bytes but \(dtype.rawValue) \(shape) needs \(needed)"
        case .partialByte(let t, let dtype, let shape):
            let bits = bitCount(dtype, shape).map { "\($0) bits" } ?? "too many bits"
            what = "tensor \(quoted(t)): \(dtype.rawValue) \(shape) is \(bits), not a whole number of bytes"
        case .overlappingTensors(let a, let b): what = "tensors \(quoted(a)) and \(quoted(b)) have overlapping data_offsets"
        case .unreferencedBytes(let b, let e):
            what = "data bytes [\(b), \(e)) belong to no tensor (tensors must cover the data buffer contiguously)"
        case .tensorNotFound(let t): what = "no tensor named \(quoted(t))"
        case .unsupportedDType(let t, let d):
            what = "tensor \(quoted(t)) is \(d.rawValue); only F32, F16, BF16 and F64 convert to a Float32 tensor"
                + (d.isInteger ? " (read it with integers(_:))" : "")
        case .notIntegers(let t, let d): what = "tensor \(quoted(t)) is \(d.rawValue), not an integer or BOOL tensor"
        case .outOfFloatRange(let t, let index, let value):
            what = "tensor \(quoted(t)): element \(index) is \(value), beyond Float32's range (±\(Float.greatestFiniteMagnitude))"
        case .outOfIntRange(let t, let index, let value):
            what = "tensor \(quoted(t)): element \(index) is \(value), beyond Int's range"
        case .overMemoryBudget(let t, let bytes):
            let whose = t.map { "tensor \(quoted($0)): " } ?? ""
            what = whose + "needs \(bytes) bytes (\(bytes >> 20) MiB), over the memory budget (MemoryBudget)"
        case .invalidName(let name):
            what = "invalid tensor name \(quoted(name)) (names must be non-empty and not '__metadata__')"
        }
        return "\(path): \(what)"
    }
}

/// The bits of `shape` elements of `dtype`, nil on overflow (a problem can be built by hand).
fileprivate func bitCount(_ dtype: SafeTensors.DType, _ shape: [Int]) -> Int? {
    var n = dtype.bits
    for d in shape {
        let (p, o) = n.multipliedReportingOverflow(by: d)
        if o { return nil }
        n = p
    }
    return n
}

/// A name in single quotes for a one-line message: control characters escaped, long names cut.
fileprivate func quoted(_ s: String) -> String {
    var out = ""
    for (n, scalar) in s.unicodeScalars.enumerated() {
        if n == 120 { out += "…"; break }
        out += scalar.value < 0x20 || scalar.value == 0x7f ? scalar.escaped(asASCII: true) : String(scalar)
    }
    return "'" + out + "'"
}
