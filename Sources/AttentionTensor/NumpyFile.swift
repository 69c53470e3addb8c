import Foundation

/// What is wrong with a `.npy` file.
public enum NumpyProblem: Equatable, Sendable {
    case cannotOpen(String)
    case notNumpy
    case unsupportedVersion(Int)
    case truncatedHeader
    case malformedHeader(String)
    case fortranOrder
    case bigEndian(String)
    case unsupportedDType(String)
    /// The header's shape needs `needed` bytes of data; the file holds `available`.
    case truncatedData(needed: Int, available: Int)
    case wrongRank(expected: Int, got: [Int])
    case cannotWrite(String)
}

/// A typed `.npy` error naming the file and the problem.
public struct NumpyError: Error, Equatable, CustomStringConvertible, Sendable {
    public let path: String
    public let problem: NumpyProblem

    public var description: String {
        let what: String
        switch problem {
        case .cannotOpen(let why): what = "cannot open: \(why)"
        case .notNumpy: what = "not a .npy file (bad magic string)"
        case .unsupportedVersion(let v): what = "unsupported .npy format version \(v)"
        case .truncatedHeader: what = "file ends inside the header"
        case .malformedHeader(let why): what = "malformed header: \(why)"
        case .fortranOrder: what = "Fortran-ordered arrays are not supported (save with C order)"
        case .bigEndian(let d): what = "big-endian dtype '\(d)' is not supported"
        case .unsupportedDType(let d): what = "unsupported dtype '\(d)' (expected <f4, <f8, <i4 or <i8)"
        case .truncatedData(let n, let a):
            let needed = n == Int.max ? "more than \(Int.max)" : "\(n)"
            what = "header's shape needs \(needed) bytes of data but the file holds \(a)"
        case .wrongRank(let r, let s): what = "expected a rank-\(r) array, got shape \(s)"
        case .cannotWrite(let why): what = "cannot write: \(why)"
        }
        return "\(path): \(what)"
    }
}

/// NumPy `.npy` files (format 1.0, 2.0 and 3.0 headers; little-endian, C order).
///
/// Reading checks the header's element count against the file's size before allocating, so a
/// header claiming 10^20 elements is an error, not an allocation. Writing goes to a temporary file
/// renamed into place, so a failed write never leaves a partial output.
public enum Numpy {
    /// Element types the package reads.
    public enum DType: String, Sendable {
        case float32 = "<f4", float64 = "<f8", int32 = "<i4", int64 = "<i8", uint8 = "|u1"
        var size: Int {
            switch self {
            case .float32, .int32: 4
            case .float64, .int64: 8
            case .uint8: 1
            }
        }
    }

    /// A parsed header.
    public struct Header: Sendable {
        public var dtype: DType
        public var shape: [Int]
        /// Byte offset of the data.
        public var dataOffset: Int
    }

    /// Reads a float array (`<f4`, or `<f8` converted to Float32) as a contiguous tensor.
    public static func readTensor(_ path: String, rank: Int? = nil) throws -> Tensor {
        try withFile(path) { file, size in try readTensor(file: file, size: size, path: path, rank: rank) }
    }

    /// Reads a float array from the bytes of a `.npy` file held in memory; `name` labels errors.
    public static func readTensor(bytes: [UInt8], name: String = "<memory>", rank: Int? = nil) throws -> Tensor {
        try withMemoryFile(bytes, name: name) { file, size in try readTensor(file: file, size: size, path: name, rank: rank) }
    }

    /// Reads an integer array from the bytes of a `.npy` file held in memory.
    public static func readIntegers(bytes: [UInt8], name: String = "<memory>") throws -> (shape: [Int], values: [Int]) {
        try withMemoryFile(bytes, name: name) { file, size in try readIntegers(file: file, size: size, path: name) }
    }

    static func withMemoryFile<R>(_ bytes: [UInt8], name: String, _ body: (UnsafeMutablePointer<FILE>, Int) throws -> R) throws -> R {
        guard !bytes.isEmpty else { throw NumpyError(path: name, problem: .notNumpy) }
        var copy = bytes
        return try copy.withUnsafeMutableBytes { raw in
            guard let file = fmemopen(raw.baseAddress, raw.count, "rb") else {
                throw NumpyError(path: name, problem: .cannotOpen(String(cString: strerror(errno))))
            }
            defer { fclose(file) }
            return try body(file, raw.count)
        }
    }

    static func readTensor(file: UnsafeMutablePointer<FILE>, size: Int, path: String, rank: Int?) throws -> Tensor {
        let header = try readHeader(file, size: size, path: path)
        if let rank, header.shape.count != rank {
            throw NumpyError(path: path, problem: .wrongRank(expected: rank, got: header.shape))
        }
        guard header.dtype == .float32 || header.dtype == .float64 else {
            throw NumpyError(path: path, problem: .unsupportedDType(header.dtype.rawValue + " (need a float array)"))
        }
        var t = try Tensor(uninitialized: header.shape)
        try t.withUnsafeMutableBufferPointer { buf in
            if header.dtype == .float32 {
                try readExactly(file, into: UnsafeMutableRawPointer(buf.baseAddress!), bytes: buf.count * 4, path: path)
            } else {
                try readConverted(file, count: buf.count, path: path, as: Double.self) { i, x in buf[i] = Float(x) }
            }
        }
        return t
    }

    /// Reads an integer array (`<i4` or `<i8`; used for BigBird random plans).
    public static func readIntegers(_ path: String) throws -> (shape: [Int], values: [Int]) {
        try withFile(path) { file, size in try readIntegers(file: file, size: size, path: path) }
    }

    static func readIntegers(file: UnsafeMutablePointer<FILE>, size: Int, path: String) throws -> (shape: [Int], values: [Int]) {
        let header = try readHeader(file, size: size, path: path)
        let n = try elementCount(of: header.shape)
        var values = [Int](repeating: 0, count: n)
        switch header.dtype {
        case .int32: try readConverted(file, count: n, path: path, as: Int32.self) { i, x in values[i] = Int(x) }
        case .int64: try readConverted(file, count: n, path: path, as: Int64.self) { i, x in values[i] = Int(x) }
        default: throw NumpyError(path: path, problem: .unsupportedDType(header.dtype.rawValue + " (need an integer array)"))
        }
        return (header.shape, values)
    }

    /// Writes a Float32 tensor as `<f4`, C order.
    public static func write(_ tensor: Tensor, to path: String) throws {
        let t = tensor.contiguous()
        try t.withUnsafePointer { p in
            try writeRaw(path: path, dtype: .float32, shape: t.shape, bytes: UnsafeRawBufferPointer(start: p, count: t.count * 4))
        }
    }

    /// Writes 32-bit integers as an `<i4` array of the given shape.
    public static func write(int32 values: [Int32], shape: [Int], to path: String) throws {
        try values.withUnsafeBytes { try writeRaw(path: path, dtype: .int32, shape: shape, bytes: $0) }
    }

    /// Writes bytes as a `|u1` array of the given shape.
    public static func write(uint8 values: [UInt8], shape: [Int], to path: String) throws {
        try values.withUnsafeBytes { try writeRaw(path: path, dtype: .uint8, shape: shape, bytes: $0) }
    }

    // MARK: - Header

    static func headerText(dtype: DType, shape: [Int]) -> [UInt8] {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var dict = "{'descr': '\(dtype.rawValue)', 'fortran_order': False, 'shape': \(shapeText), }"
        // magic (6) + version (2) + length (2) + dict + '\n' is padded to a multiple of 64.
        let total = 10 + dict.utf8.count + 1
        dict += String(repeating: " ", count: (64 - total % 64) % 64) + "\n"
        let len = UInt16(dict.utf8.count)
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(len & 0xff), UInt8(len >> 8)] + Array(dict.utf8)
    }

    /// Parses the header at the start of `file` (whose size is `size` bytes) and checks the
    /// data it announces fits in the file.
    static func readHeader(_ file: UnsafeMutablePointer<FILE>, size: Int, path: String) throws -> Header {
        func fail(_ p: NumpyProblem) -> NumpyError { NumpyError(path: path, problem: p) }
        var pre = [UInt8](repeating: 0, count: 8)
        guard size >= 8, fread(&pre, 1, 8, file) == 8 else {
            throw fail(size >= 6 && pre.starts(with: [0x93] + Array("NUMPY".utf8)) ? .truncatedHeader : .notNumpy)
        }
        guard pre.starts(with: [0x93] + Array("NUMPY".utf8)) else { throw fail(.notNumpy) }
        let major = Int(pre[6])
        let lengthBytes: Int
        switch major {
        case 1: lengthBytes = 2
        case 2, 3: lengthBytes = 4
        default: throw fail(.unsupportedVersion(major))
        }
        var lenRaw = [UInt8](repeating: 0, count: lengthBytes)
        guard fread(&lenRaw, 1, lengthBytes, file) == lengthBytes else { throw fail(.truncatedHeader) }
        let headerLength = lenRaw.enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let dataOffset = 8 + lengthBytes + headerLength
        guard headerLength <= 1 << 20 else { throw fail(.malformedHeader("header length \(headerLength) bytes")) }
        guard dataOffset <= size else { throw fail(.truncatedHeader) }
        var text = [UInt8](repeating: 0, count: headerLength)
        guard fread(&text, 1, headerLength, file) == headerLength else { throw fail(.truncatedHeader) }
        guard let dict = String(bytes: text, encoding: major == 3 ? .utf8 : .isoLatin1) else {
            throw fail(.malformedHeader("not text"))
        }
        var parser = HeaderParser(text: dict, path: path)
        let fields = try parser.parse()
        guard case .string(let descr)? = fields["descr"] else { throw fail(.malformedHeader("no 'descr'")) }
        guard case .bool(let fortran)? = fields["fortran_order"] else { throw fail(.malformedHeader("no 'fortran_order'")) }
        guard case .tuple(let shape)? = fields["shape"] else { throw fail(.malformedHeader("no 'shape'")) }
        if descr.hasPrefix(">") { throw fail(.bigEndian(descr)) }
        // '=' (native) is little-endian on every platform this package builds for; '<u1' is '|u1'.
        var normalised = descr.hasPrefix("=") ? "<" + descr.dropFirst() : descr
        if normalised == "<u1" { normalised = "|u1" }
        guard let dtype = DType(rawValue: normalised) else {
            throw fail(.unsupportedDType(descr))
        }
        if fortran && shape.filter({ $0 > 1 }).count > 1 { throw fail(.fortranOrder) }
        let available = size - dataOffset
        let count: Int
        do { count = try elementCount(of: shape) } catch {
            throw fail(.malformedHeader("shape \(shape) overflows any addressable size"))
        }
        let (needed, overflow) = count.multipliedReportingOverflow(by: dtype.size)
        guard !overflow, needed <= available else {
            throw fail(.truncatedData(needed: overflow ? Int.max : needed, available: available))
        }
        return Header(dtype: dtype, shape: shape, dataOffset: dataOffset)
    }

    // MARK: - File plumbing

    static func withFile<R>(_ path: String, _ body: (UnsafeMutablePointer<FILE>, Int) throws -> R) throws -> R {
        guard let file = fopen(path, "rb") else {
            throw NumpyError(path: path, problem: .cannotOpen(String(cString: strerror(errno))))
        }
        defer { fclose(file) }
        var st = stat()
        guard fstat(fileno(file), &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw NumpyError(path: path, problem: .cannotOpen("not a regular file"))
        }
        return try body(file, Int(st.st_size))
    }

    static func readExactly(_ file: UnsafeMutablePointer<FILE>, into p: UnsafeMutableRawPointer, bytes: Int, path: String) throws {
        var done = 0
        while done < bytes {
            let got = fread(p + done, 1, min(bytes - done, 1 << 26), file)
            if got == 0 { throw NumpyError(path: path, problem: .truncatedData(needed: bytes, available: done)) }
            done += got
        }
    }

    /// Reads `count` little-endian values of type T in chunks, handing each to `store`.
    static func readConverted<T: FixedWidthInteger>(_ f: UnsafeMutablePointer<FILE>, count: Int, path: String, as: T.Type,
                                                    _ store: (Int, T) -> Void) throws {
        try readChunks(f, count: count, size: MemoryLayout<T>.size, path: path) { raw, base, n in
            for i in 0..<n { store(base + i, T(littleEndian: raw.loadUnaligned(fromByteOffset: i * MemoryLayout<T>.size, as: T.self))) }
        }
    }

    static func readConverted(_ f: UnsafeMutablePointer<FILE>, count: Int, path: String, as: Double.Type,
                              _ store: (Int, Double) -> Void) throws {
        try readChunks(f, count: count, size: 8, path: path) { raw, base, n in
            for i in 0..<n {
                store(base + i, Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))))
            }
        }
    }

    private static func readChunks(_ f: UnsafeMutablePointer<FILE>, count: Int, size: Int, path: String,
                                   _ body: (UnsafeRawPointer, Int, Int) -> Void) throws {
        let chunk = 1 << 16
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk * size, alignment: 8)
        defer { buffer.deallocate() }
        var base = 0
        while base < count {
            let n = min(chunk, count - base)
            try readExactly(f, into: buffer, bytes: n * size, path: path)
            body(UnsafeRawPointer(buffer), base, n)
            base += n
        }
    }

    static func writeRaw(path: String, dtype: DType, shape: [Int], bytes: UnsafeRawBufferPointer) throws {
        let tmp = path + ".partial-\(getpid())"
        guard let file = fopen(tmp, "wb") else {
            throw NumpyError(path: path, problem: .cannotWrite(String(cString: strerror(errno))))
        }
        let header = headerText(dtype: dtype, shape: shape)
        var ok = fwrite(header, 1, header.count, file) == header.count
        if ok, bytes.count > 0 { ok = fwrite(bytes.baseAddress!, 1, bytes.count, file) == bytes.count }
        ok = (fclose(file) == 0) && ok
        guard ok, rename(tmp, path) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(tmp)
            throw NumpyError(path: path, problem: .cannotWrite(why))
        }
    }
}

/// The Python-literal dict of a `.npy` header: string, bool and int-tuple values only.
struct HeaderParser {
    enum Value: Equatable { case string(String), bool(Bool), tuple([Int]) }
    let chars: [Character]
    let path: String
    var i = 0

    init(text: String, path: String) {
        chars = Array(text)
        self.path = path
    }

    func error(_ why: String) -> NumpyError { NumpyError(path: path, problem: .malformedHeader(why)) }

    mutating func skipSpace() { while i < chars.count, chars[i].isWhitespace { i += 1 } }

    mutating func expect(_ c: Character) throws {
        skipSpace()
        guard i < chars.count, chars[i] == c else { throw error("expected '\(c)' at character \(i)") }
        i += 1
    }

    mutating func string() throws -> String {
        skipSpace()
        guard i < chars.count, chars[i] == "'" || chars[i] == "\"" else { throw error("expected a string at character \(i)") }
        let quote = chars[i]
        i += 1
        let start = i
        while i < chars.count, chars[i] != quote { i += 1 }
        guard i < chars.count else { throw error("unterminated string") }
        defer { i += 1 }
        return String(chars[start..<i])
    }

    mutating func value() throws -> Value {
        skipSpace()
        guard i < chars.count else { throw error("missing value") }
        if chars[i] == "'" || chars[i] == "\"" { return .string(try string()) }
        if chars[i] == "(" {
            i += 1
            var dims = [Int]()
            while true {
                skipSpace()
                guard i < chars.count else { throw error("unterminated shape") }
                if chars[i] == ")" { i += 1; break }
                let start = i
                while i < chars.count, chars[i].isNumber { i += 1 }
                guard i > start, let d = Int(String(chars[start..<i])) else { throw error("bad shape entry at character \(start)") }
                dims.append(d)
                skipSpace()
                if i < chars.count, chars[i] == "," { i += 1 }
            }
            return .tuple(dims)
        }
        for (word, v) in [("True", true), ("False", false)] where chars[i...].starts(with: word) {
            i += word.count
            return .bool(v)
        }
        throw error("unexpected value at character \(i)")
    }

    mutating func parse() throws -> [String: Value] {
        try expect("{")
        var fields = [String: Value]()
        while true {
            skipSpace()
            guard i < chars.count else { throw error("unterminated dict") }
            if chars[i] == "}" { break }
            let key = try string()
            try expect(":")
            fields[key] = try value()
            skipSpace()
            if i < chars.count, chars[i] == "," { i += 1 }
        }
        return fields
    }
}
