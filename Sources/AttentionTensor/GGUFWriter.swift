import Foundation

/// Builds GGUF files (v2 or v3), for tests and tools: metadata in the order first set, tensors
/// in the order added, each tensor's data at the next multiple of the alignment.
///
/// Nothing is checked while adding; ``encode(version:alignment:name:)`` and
/// ``write(to:version:alignment:)`` check everything the reader checks (unique keys and names,
/// at most four dimensions, whole blocks per row, data of exactly the tensor's size, a
/// power-of-two alignment agreeing with any `general.alignment` set) and throw ``GGUFError``
/// before writing. With an alignment other than 32, `general.alignment` (uint32) is added unless set.
public struct GGUFWriter: Sendable {
    public private(set) var metadata: [(key: String, value: GGUFValue)] = []
    public private(set) var tensors: [(name: String, shape: [Int], type: GGMLType, data: [UInt8])] = []

    public init() {}

    /// Sets `key` (replacing an earlier value in place, so keys stay unique and in first-set order).
    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) { metadata[i].value = value } else { metadata.append((key, value)) }
    }

    public mutating func remove(_ key: String) { metadata.removeAll { $0.key == key } }

    /// Adds a tensor: `shape` in GGUF order (innermost first), `data` its packed blocks.
    public mutating func addTensor(name: String, shape: [Int], type: GGMLType, data: [UInt8]) {
        tensors.append((name, shape, type, data))
    }

    /// Adds an F32 tensor.
    public mutating func addTensor(name: String, shape: [Int], floats: [Float]) {
        addTensor(name: name, shape: shape, type: .f32, data: floats.withUnsafeBytes { Array($0) })
    }

    /// The file's bytes.
    public func encode(version: Int = 3, alignment: Int = 32, name: String = "<memory>") throws -> [UInt8] {
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: name, version: UInt32(truncatingIfNeeded: version)) }
        guard alignment > 0, alignment <= 1 << 30, alignment & (alignment - 1) == 0 else {
            throw GGUFError.badAlignment(path: name, found: "\(alignment)")
        }
        var meta = metadata
        if let a = meta.first(where: { $0.key == "general.alignment" })?.value {
            guard a.isInteger, a.integer == alignment else { throw GGUFError.badAlignment(path: name, found: "\(a) set, \(alignment) asked") }
        } else if alignment != GGUFFile.defaultAlignment {
            meta.append(("general.alignment", .uint32(UInt32(alignment))))
        }
        var out = [UInt8]()
        func put<T: FixedWidthInteger>(_ x: T) { withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) } }
        func putString(_ s: String) { put(UInt64(s.utf8.count)); out.append(contentsOf: s.utf8) }
        func putArray(_ a: GGUFArray) {
            put(a.elementType.rawValue)
            put(UInt64(a.count))
            switch a {
            case .uint8(let v): out += v
            case .int8(let v): v.forEach { put($0) }
            case .uint16(let v): v.forEach { put($0) }
            case .int16(let v): v.forEach { put($0) }
            case .uint32(let v): v.forEach { put($0) }
            case .int32(let v): v.forEach { put($0) }
            case .uint64(let v): v.forEach { put($0) }
            case .int64(let v): v.forEach { put($0) }
            case .float32(let v): v.forEach { put($0.bitPattern) }
            case .float64(let v): v.forEach { put($0.bitPattern) }
            case .bool(let v): v.forEach { out.append($0 ? 1 : 0) }
            case .string(let v): v.forEach(putString)
            case .array(let v): v.forEach(putArray)
            }
        }
        func putValue(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): put(x)
            case .int8(let x): put(x)
            case .uint16(let x): put(x)
            case .int16(let x): put(x)
            case .uint32(let x): put(x)
            case .int32(let x): put(x)
            case .uint64(let x): put(x)
            case .int64(let x): put(x)
            case .float32(let x): put(x.bitPattern)
            case .float64(let x): put(x.bitPattern)
            case .bool(let x): out.append(x ? 1 : 0)
            case .string(let s): putString(s)
            case .array(let a): putArray(a)
            }
        }

        // Check the tensors and lay out their data.
        var seen = Set<String>()
        var offsets = [Int]()
        var end = 0
        for t in tensors {
            guard seen.insert(t.name).inserted else { throw GGUFError.duplicateTensor(path: name, tensor: t.name) }
            guard t.shape.count <= GGUFFile.maxDimensions else {
                throw GGUFError.tooManyDimensions(path: name, tensor: t.name, count: UInt32(t.shape.count))
            }
            let dims = t.shape.map { UInt64(truncatingIfNeeded: $0) }
            var count = 1
            for d in t.shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard d >= 0, !o else { throw GGUFError.overflowingShape(path: name, tensor: t.name, dims: dims) }
                count = p
            }
            guard (t.shape.first ?? 1) % t.type.blockSize == 0 else {
                throw GGUFError.notWholeBlocks(path: name, tensor: t.name, type: t.type, count: t.shape.first ?? 1)
            }
            guard let bytes = t.type.byteCount(elements: count) else { throw GGUFError.overflowingShape(path: name, tensor: t.name, dims: dims) }
            guard bytes == t.data.count else {
                throw GGUFError.cannotWrite(path: name, reason: "tensor \(gguf_quoted(t.name)) \(t.type.name) \(t.shape) needs \(bytes) bytes, \(t.data.count) given")
            }
            offsets.append(end)
            end = (end + bytes + alignment - 1) / alignment * alignment
        }
        var keys = Set<String>()
        for (k, _) in meta where !keys.insert(k).inserted { throw GGUFError.duplicateKey(path: name, key: k) }

        out += Array("GGUF".utf8)
        put(UInt32(version))
        put(UInt64(tensors.count))
        put(UInt64(meta.count))
        for (k, v) in meta {
            putString(k)
            put(v.type.rawValue)
            putValue(v)
        }
        for (t, offset) in zip(tensors, offsets) {
            putString(t.name)
            put(UInt32(t.shape.count))
            t.shape.forEach { put(UInt64($0)) }
            put(t.type.rawValue)
            put(UInt64(offset))
        }
        let pad = { (n: Int) in out += [UInt8](repeating: 0, count: (alignment - n % alignment) % alignment) }
        pad(out.count)
        for t in tensors {
            out += t.data
            pad(t.data.count)   // data offsets are multiples of the alignment, as is the data start
        }
        return out
    }

    /// Writes the file through a temporary file in the same directory, renamed over `path`, so
    /// `path` never holds a partial file.
    public func write(to path: String, version: Int = 3, alignment: Int = 32) throws {
        let bytes = try encode(version: version, alignment: alignment, name: path)
        do {
            try SafeTensors.writeAtomically(to: path) { emit in try bytes.withUnsafeBytes { try emit($0) } }
        } catch let e as SafeTensorsError {
            if case .cannotWrite(let why) = e.problem { throw GGUFError.cannotWrite(path: path, reason: why) }
            throw GGUFError.cannotWrite(path: path, reason: e.description)
        }
    }
}
