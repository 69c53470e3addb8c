import AttentionTensor
import CAttentionKernels
import Foundation
import XCTest

/// The GGUF reader and writer (round trips, accessors, every damaged-file class, truncation at
/// every offset) and ggml dequantisation, bit for bit against fixtures that gguf-py computed
/// (Tools/make_gguf_fixtures.py), and on the two real models when `make models` has fetched them.
final class GGUFTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/gguf")
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "gguf-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    // MARK: - Helpers

    /// The error reading `bytes` throws (nil if it reads; a non-GGUFError fails the test).
    func readError(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> GGUFError? {
        do { _ = try GGUFFile(bytes: bytes, name: "model.gguf"); return nil } catch let e as GGUFError {
            XCTAssertFalse(e.description.contains("\n"), "multi-line: \(e)", file: file, line: line)
            XCTAssertTrue(e.description.hasPrefix("model.gguf: "), e.description, file: file, line: line)
            return e
        } catch {
            XCTFail("untyped error \(error)", file: file, line: line)
            return nil
        }
    }

    func sameBits(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        var bad = 0
        for i in 0..<min(a.count, b.count) where !(a[i].bitPattern == b[i].bitPattern || (a[i].isNaN && b[i].isNaN)) {
            if bad < 5 { XCTFail("\(what)[\(i)]: \(a[i]) (0x\(String(a[i].bitPattern, radix: 16))) vs \(b[i]) (0x\(String(b[i].bitPattern, radix: 16)))", file: file, line: line) }
            bad += 1
        }
        XCTAssertEqual(bad, 0, "\(what): \(bad) values differ", file: file, line: line)
    }

    func floats(_ url: URL) throws -> [Float] {
        let d = try Data(contentsOf: url)
        return d.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// Raw GGUF bytes, written field by field (for files the writer refuses to produce).
    struct Raw {
        var b: [UInt8] = []
        mutating func u8(_ x: UInt8) { b.append(x) }
        mutating func u32(_ x: UInt32) { withUnsafeBytes(of: x.littleEndian) { b += $0 } }
        mutating func u64(_ x: UInt64) { withUnsafeBytes(of: x.littleEndian) { b += $0 } }
        mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); b += s.utf8 }
        mutating func bytes(_ s: [UInt8]) { u64(UInt64(s.count)); b += s }
        mutating func header(version: UInt32 = 3, tensors: UInt64, kv: UInt64) { b += Array("GGUF".utf8); u32(version); u64(tensors); u64(kv) }
        mutating func tensor(_ name: String, _ dims: [UInt64], _ type: UInt32, _ offset: UInt64) {
            str(name); u32(UInt32(dims.count)); dims.forEach { u64($0) }; u32(type); u64(offset)
        }
        mutating func pad(_ a: Int = 32) { b += [UInt8](repeating: 0, count: (a - b.count % a) % a) }
    }

    /// A small valid file: two metadata pairs, two F32 tensors.
    func smallFile() -> Raw {
        var r = Raw()
        r.header(tensors: 2, kv: 2)
        r.str("general.architecture"); r.u32(8); r.str("llama")
        r.str("k.u32"); r.u32(4); r.u32(7)
        r.tensor("a", [4], 0, 0)
        r.tensor("b", [2, 2], 0, 32)
        r.pad()
        r.b += [UInt8](repeating: 1, count: 16); r.pad()
        r.b += [UInt8](repeating: 2, count: 16)
        return r
    }

    func everyMetadataType() -> [(String, GGUFValue)] {
        [
            ("u8", .uint8(255)), ("i8", .int8(-128)), ("u16", .uint16(65535)), ("i16", .int16(-32768)),
            ("u32", .uint32(.max)), ("i32", .int32(.min)), ("u64", .uint64(.max)), ("i64", .int64(.min)),
            ("f32", .float32(-0.0)), ("f32.nan", .float32(Float(bitPattern: 0x7fc0_1234))), ("f64", .float64(.pi)),
            ("t", .bool(true)), ("f", .bool(false)), ("s", .string("héllo ▁ 🙂")), ("s.empty", .string("")),
            ("a.u8", .array(.uint8([0, 1, 255]))), ("a.i8", .array(.int8([-1, 2]))), ("a.u16", .array(.uint16([9]))),
            ("a.i16", .array(.int16([-300, 300]))), ("a.u32", .array(.uint32([1, 2, 3]))), ("a.i32", .array(.int32([-5, 5]))),
            ("a.u64", .array(.uint64([.max]))), ("a.i64", .array(.int64([.min, 0]))), ("a.f32", .array(.float32([1.5, -.infinity]))),
            ("a.f64", .array(.float64([1e300]))), ("a.bool", .array(.bool([true, false, true]))),
            ("a.str", .array((0..<5).map { .string("t\($0)") })), ("a.empty", .array(.uint32([]))),
            ("a.nested", .array(.array([.string(["x", "y"]), .int8([1]), .array([.bool([])])]))),
        ]
    }

    // MARK: - Round trips

    func testRoundTripEveryMetadataTypeVersionsAndAlignments() throws {
        for version in [2, 3] {
            for alignment in [1, 8, 32, 64, 256] {
                var w = GGUFWriter()
                for (k, v) in everyMetadataType() { w.set(k, v) }
                w.set("general.architecture", .string("test"))
                w.addTensor(name: "f", shape: [3, 2], floats: [1, 2, 3, -0.0, .nan, .infinity])
                w.addTensor(name: "q", shape: [64, 1], type: .q8_0, data: (0..<68).map { UInt8($0) })
                w.addTensor(name: "k", shape: [256], type: .q4_K, data: [UInt8](repeating: 0xab, count: 144))
                w.addTensor(name: "empty", shape: [32, 0], type: .q4_0, data: [])
                w.addTensor(name: "scalar", shape: [], floats: [42])
                let path = dir + "/rt-\(version)-\(alignment).gguf"
                try w.write(to: path, version: version, alignment: alignment)
                let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
                XCTAssertEqual(try w.encode(version: version, alignment: alignment, name: path), bytes)
                for g in [try GGUFFile(path: path), try GGUFFile(bytes: bytes, name: "m")] {
                    XCTAssertEqual(g.version, version)
                    XCTAssertEqual(g.alignment, alignment)
                    XCTAssertEqual(g.dataStart % alignment, 0)
                    var expected = Dictionary(uniqueKeysWithValues: everyMetadataType())
                    expected["general.architecture"] = .string("test")
                    if alignment != 32 { expected["general.alignment"] = .uint32(UInt32(alignment)) }
                    XCTAssertEqual(g.metadata, expected)
                    XCTAssertEqual(Array(g.metadataKeys.prefix(w.metadata.count)), w.metadata.map(\.key))
                    XCTAssertEqual(g.tensors.map(\.name), ["f", "q", "k", "empty", "scalar"])
                    XCTAssertEqual(g.tensors.map(\.shape), [[3, 2], [64, 1], [256], [32, 0], []])
                    XCTAssertEqual(g.tensors.map(\.type), [.f32, .q8_0, .q4_K, .q4_0, .f32])
                    for (t, data) in zip(g.tensors, w.tensors.map(\.data)) {
                        XCTAssertEqual(t.offset % alignment, 0)
                        XCTAssertEqual(Array(g.bytes(of: t)), data, t.name)
                        XCTAssertEqual(g.withBytes(of: t) { $0.count }, data.count)
                    }
                    let f = try XCTUnwrap(g.tensor(named: "f"))
                    XCTAssertEqual(f.rowMajorShape, [2, 3])
                    XCTAssertEqual(f.elementCount, 6)
                    XCTAssertEqual(f.bytesPerRow, 12)
                    sameBits(try g.dequantize(f), [1, 2, 3, -0.0, .nan, .infinity], "f")
                    XCTAssertEqual(try g.dequantize(XCTUnwrap(g.tensor(named: "empty"))), [])
                    XCTAssertEqual(try g.dequantize(XCTUnwrap(g.tensor(named: "scalar"))), [42])
                    XCTAssertEqual(g.tensor(named: "q")?.bytesPerRow, 68)
                    XCTAssertTrue(g.hasTensor("k"))
                    XCTAssertFalse(g.hasTensor("nope"))
                    XCTAssertNil(g.tensor(named: "nope"))
                }
            }
        }
    }

    func testWriterRefusesWhatTheReaderWould() {
        func refuses(_ edit: (inout GGUFWriter) -> Void, version: Int = 3, alignment: Int = 32) -> GGUFError? {
            var w = GGUFWriter()
            w.addTensor(name: "ok", shape: [2], floats: [1, 2])
            edit(&w)
            do { _ = try w.encode(version: version, alignment: alignment, name: "w.gguf"); return nil } catch { return error as? GGUFError }
        }
        XCTAssertEqual(refuses({ $0.addTensor(name: "ok", shape: [1], floats: [1]) }), .duplicateTensor(path: "w.gguf", tensor: "ok"))
        XCTAssertEqual(refuses({ $0.addTensor(name: "q", shape: [16], type: .q8_0, data: []) }),
                       .notWholeBlocks(path: "w.gguf", tensor: "q", type: .q8_0, count: 16))
        XCTAssertEqual(refuses({ $0.addTensor(name: "r", shape: [1, 1, 1, 1, 1], floats: [1]) }),
                       .tooManyDimensions(path: "w.gguf", tensor: "r", count: 5))
        guard case .cannotWrite? = refuses({ $0.addTensor(name: "s", shape: [3], floats: [1]) }) else { return XCTFail("size") }
        XCTAssertEqual(refuses({ _ in }, version: 1), .unsupportedVersion(path: "w.gguf", version: 1))
        XCTAssertEqual(refuses({ _ in }, alignment: 48), .badAlignment(path: "w.gguf", found: "48"))
        guard case .badAlignment? = refuses({ $0.set("general.alignment", .uint32(64)) }, alignment: 32) else { return XCTFail("alignment") }
        XCTAssertNil(refuses({ $0.set("general.alignment", .uint32(64)) }, alignment: 64))
        // set replaces in place.
        var w = GGUFWriter()
        w.set("a", .int8(1)); w.set("b", .int8(2)); w.set("a", .int8(3))
        XCTAssertEqual(w.metadata.map(\.key), ["a", "b"])
        XCTAssertEqual(w.metadata.first?.value, .int8(3))
        // Writing fails cleanly into a missing directory and leaves no file.
        XCTAssertThrowsError(try w.write(to: dir + "/missing/x.gguf")) { XCTAssertNotNil($0 as? GGUFError) }
    }

    func testMetadataAccessors() throws {
        var w = GGUFWriter()
        for (k, v) in everyMetadataType() { w.set(k, v) }
        w.set("neg", .int64(-3))
        w.set("a.i64.big", .array(.int64([1, Int64(Int32.max) + 1])))
        let g = try GGUFFile(bytes: try w.encode(), name: "m.gguf")
        XCTAssertEqual(try g.string("s"), "héllo ▁ 🙂")
        XCTAssertEqual(try g.requiredString("s.empty"), "")
        XCTAssertEqual(try g.int("u8"), 255)
        XCTAssertEqual(try g.int("i64"), Int(Int64.min))
        XCTAssertEqual(try g.requiredInt("u32"), Int(UInt32.max))
        XCTAssertEqual(try g.double("f64"), .pi)
        XCTAssertEqual(try g.double("neg"), -3)
        XCTAssertEqual(try g.double("f32").map { $0.sign }, .minus)
        XCTAssertEqual(try g.bool("t"), true)
        XCTAssertEqual(try g.bool("f"), false)
        XCTAssertEqual(try g.strings("a.str"), ["t0", "t1", "t2", "t3", "t4"])
        XCTAssertEqual(try g.floats("a.f32"), [1.5, -.infinity])
        XCTAssertEqual(try g.floats("a.f64"), [Float(1e300)])
        XCTAssertEqual(try g.int32s("a.i32"), [-5, 5])
        XCTAssertEqual(try g.int32s("a.u8"), [0, 1, 255])
        XCTAssertEqual(try g.int32s("a.i16"), [-300, 300])
        // Empty arrays read as empty whatever their element type.
        XCTAssertEqual(try g.strings("a.empty"), [])
        XCTAssertEqual(try g.floats("a.empty"), [])
        // Absent: nil, or missingKey from the required forms.
        XCTAssertNil(try g.string("absent"))
        XCTAssertNil(try g.int("absent"))
        XCTAssertNil(try g.strings("absent"))
        XCTAssertThrowsError(try g.requiredString("absent")) { XCTAssertEqual($0 as? GGUFError, .missingKey(path: "m.gguf", key: "absent")) }
        XCTAssertThrowsError(try g.requiredInt("absent")) { XCTAssertEqual($0 as? GGUFError, .missingKey(path: "m.gguf", key: "absent")) }
        // Wrong types name the key and both types.
        XCTAssertThrowsError(try g.string("u8")) {
            XCTAssertEqual($0 as? GGUFError, .wrongType(path: "m.gguf", key: "u8", found: "uint8", expected: "string"))
            XCTAssertEqual("\($0)", "m.gguf: metadata 'u8' is uint8, expected string")
        }
        XCTAssertThrowsError(try g.int("s")) { XCTAssertEqual($0 as? GGUFError, .wrongType(path: "m.gguf", key: "s", found: "string", expected: "an integer")) }
        XCTAssertThrowsError(try g.int("f32")) { XCTAssertNotNil($0 as? GGUFError) }
        XCTAssertThrowsError(try g.double("s")) { XCTAssertNotNil($0 as? GGUFError) }
        XCTAssertThrowsError(try g.bool("u8")) { XCTAssertNotNil($0 as? GGUFError) }
        XCTAssertThrowsError(try g.strings("a.u8")) {
            XCTAssertEqual($0 as? GGUFError, .wrongType(path: "m.gguf", key: "a.u8", found: "array of uint8", expected: "array of string"))
        }
        XCTAssertThrowsError(try g.floats("a.str")) { XCTAssertNotNil($0 as? GGUFError) }
        XCTAssertThrowsError(try g.int32s("a.f32")) { XCTAssertNotNil($0 as? GGUFError) }
        // Range checks.
        XCTAssertThrowsError(try g.int("u64")) { guard case .valueOutOfRange(_, "u64", _, "Int")? = $0 as? GGUFError else { return XCTFail("\($0)") } }
        XCTAssertThrowsError(try g.int32s("a.u64")) { guard case .valueOutOfRange? = $0 as? GGUFError else { return XCTFail("\($0)") } }
        XCTAssertThrowsError(try g.int32s("a.i64.big")) { guard case .valueOutOfRange? = $0 as? GGUFError else { return XCTFail("\($0)") } }
    }

    // MARK: - Damaged files

    func testTheSmallFileReads() throws {
        let g = try GGUFFile(bytes: smallFile().b, name: "model.gguf")
        XCTAssertEqual(g.tensors.map(\.name), ["a", "b"])
        XCTAssertEqual(try g.requiredString("general.architecture"), "llama")
        XCTAssertEqual(Array(g.bytes(of: g.tensors[1])), [UInt8](repeating: 2, count: 16))
    }

    func testTruncationAtEveryOffsetIsRefused() throws {
        let bytes = smallFile().b
        for n in 0..<bytes.count {
            XCTAssertNotNil(readError(Array(bytes.prefix(n))), "prefix \(n)")
        }
        // And a larger file with every metadata type, at every offset too (through files at a few).
        var w = GGUFWriter()
        for (k, v) in everyMetadataType() { w.set(k, v) }
        w.addTensor(name: "q", shape: [256, 2], type: .q6_K, data: [UInt8](repeating: 7, count: 420))
        w.addTensor(name: "z", shape: [32], type: .q8_0, data: [UInt8](repeating: 1, count: 34))
        let big = try w.encode()
        let g = try GGUFFile(bytes: big)
        let end = g.tensors.map { $0.offset + $0.byteCount }.max()!
        for n in 0..<big.count where n < end {
            XCTAssertNotNil(readError(Array(big.prefix(n))), "prefix \(n)")
        }
        for n in stride(from: 0, to: big.count, by: 97) {
            let path = dir + "/t.gguf"
            try Data(big.prefix(n)).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try GGUFFile(path: path)) { XCTAssertNotNil($0 as? GGUFError) }
        }
    }

    func testEveryDamageIsRefusedByName() throws {
        let p = "model.gguf"
        var r = smallFile()
        // Header.
        XCTAssertEqual(readError([]), .truncated(path: p, what: "the magic 'GGUF'", offset: 0))
        XCTAssertEqual(readError(Array("GGUX".utf8) + r.b.dropFirst(4)), .badMagic(path: p, found: Array("GGUX".utf8)))
        for v: UInt32 in [0, 1, 4, 99, 0x0300_0000] {
            var bad = r.b
            withUnsafeBytes(of: v.littleEndian) { bad.replaceSubrange(4..<8, with: $0) }
            XCTAssertEqual(readError(bad), .unsupportedVersion(path: p, version: v))
        }
        XCTAssertTrue(GGUFError.unsupportedVersion(path: p, version: 0x0300_0000).description.contains("big-endian"))
        XCTAssertTrue(GGUFError.unsupportedVersion(path: p, version: 1).description.contains("v1"))
        var bad = r.b
        withUnsafeBytes(of: UInt64(1 << 60).littleEndian) { bad.replaceSubrange(8..<16, with: $0) }
        guard case .absurdCount(p, "tensor", 1 << 60, _)? = readError(bad) else { return XCTFail("tensor count") }
        bad = r.b
        withUnsafeBytes(of: UInt64(1 << 61).littleEndian) { bad.replaceSubrange(16..<24, with: $0) }
        guard case .absurdCount(p, "metadata", 1 << 61, _)? = readError(bad) else { return XCTFail("kv count") }

        // Metadata.
        func kv(_ body: (inout Raw) -> Void) -> GGUFError? {
            var x = Raw()
            x.header(tensors: 0, kv: 1)
            body(&x)
            return readError(x.b)
        }
        guard case .absurdLength(p, _, UInt64.max, 24)? = kv({ $0.u64(.max); $0.b += [UInt8](repeating: 0, count: 16) }) else { return XCTFail("key length") }
        XCTAssertEqual(kv { $0.bytes([0xff, 0xfe]); $0.u32(0); $0.u8(0) }, .invalidUTF8(path: p, what: "the key of metadata pair 0", offset: 24))
        XCTAssertEqual(kv { $0.str("k"); $0.u32(13); $0.u8(0) }, .unknownValueType(path: p, key: "k", type: 13))
        XCTAssertEqual(kv { $0.str("k"); $0.u32(7); $0.u8(2) }, .invalidBool(path: p, key: "k", value: 2))
        guard case .absurdLength(p, _, 1000, _)? = kv({ $0.str("k"); $0.u32(8); $0.u64(1000); $0.u8(65) }) else { return XCTFail("string length") }
        guard case .truncated(p, _, _)? = kv({ $0.str("k"); $0.u32(6); $0.u8(1) }) else { return XCTFail("short float") }
        XCTAssertEqual(kv { $0.str("k"); $0.u32(9); $0.u32(99); $0.u64(0) }, .unknownValueType(path: p, key: "k", type: 99))
        guard case .absurdCount(p, _, 1 << 40, _)? = kv({ $0.str("k"); $0.u32(9); $0.u32(4); $0.u64(1 << 40); $0.u64(0) }) else {
            return XCTFail("array count")
        }
        guard case .absurdCount? = kv({ $0.str("k"); $0.u32(9); $0.u32(8); $0.u64(3); $0.u64(0); $0.u64(0) }) else { return XCTFail("string array count") }
        XCTAssertEqual(kv { $0.str("k"); $0.u32(9); $0.u32(7); $0.u64(2); $0.u8(1); $0.u8(9) }, .invalidBool(path: p, key: "k", value: 9))
        XCTAssertEqual(kv { x in
            x.str("k"); x.u32(9)
            for _ in 0..<20 { x.u32(9); x.u64(1) }
            x.u32(0); x.u64(0)
        }, .nestingTooDeep(path: p, key: "k"))
        var dup = Raw()
        dup.header(tensors: 0, kv: 2)
        for _ in 0..<2 { dup.str("k"); dup.u32(0); dup.u8(1) }
        XCTAssertEqual(readError(dup.b), .duplicateKey(path: p, key: "k"))
        for (value, found) in [(GGUFValue.uint32(48), "uint32(48)"), (.uint32(0), "uint32(0)"), (.string("32"), "string(\"32\")"),
                               (.int64(1 << 40), "int64(1099511627776)")] {
            var x = Raw()
            x.header(tensors: 0, kv: 1)
            x.str("general.alignment"); x.u32(value.type.rawValue)
            switch value {
            case .uint32(let v): x.u32(v)
            case .int64(let v): x.u64(UInt64(bitPattern: v))
            case .string(let s): x.str(s)
            default: break
            }
            XCTAssertEqual(readError(x.b), .badAlignment(path: p, found: found), found)
        }

        // Tensor infos.
        func tensor(_ dims: [UInt64], _ type: UInt32 = 0, offset: UInt64 = 0, data: Int = 64, alignment: UInt32? = nil) -> GGUFError? {
            var x = Raw()
            x.header(tensors: 1, kv: alignment == nil ? 0 : 1)
            if let alignment { x.str("general.alignment"); x.u32(4); x.u32(alignment) }
            x.tensor("t", dims, type, offset)
            x.pad(Int(alignment ?? 32))
            x.b += [UInt8](repeating: 0, count: data)
            return readError(x.b)
        }
        XCTAssertNil(tensor([16]))
        XCTAssertNil(tensor([4, 2, 1, 2]))
        XCTAssertNil(tensor([0, 5]))
        XCTAssertEqual(tensor([1, 1, 1, 1, 1]), .tooManyDimensions(path: p, tensor: "t", count: 5))
        XCTAssertEqual(tensor([1 << 62, 4]), .overflowingShape(path: p, tensor: "t", dims: [1 << 62, 4]))
        XCTAssertEqual(tensor([UInt64.max]), .overflowingShape(path: p, tensor: "t", dims: [UInt64.max]))
        XCTAssertEqual(tensor([1 << 62], 0), .overflowingShape(path: p, tensor: "t", dims: [1 << 62]))   // bytes overflow
        XCTAssertEqual(tensor([16], 4), .unknownTensorType(path: p, tensor: "t", id: 4))
        XCTAssertEqual(tensor([16], 1000), .unknownTensorType(path: p, tensor: "t", id: 1000))
        XCTAssertEqual(tensor([16, 2], 8), .notWholeBlocks(path: p, tensor: "t", type: .q8_0, count: 16))
        XCTAssertEqual(tensor([16], offset: 8), .misaligned(path: p, tensor: "t", offset: 8, alignment: 32))
        XCTAssertNil(tensor([2], offset: 8, alignment: 8))
        guard case .tensorOutOfBounds(p, "t", 0, 68, _, _)? = tensor([32, 2], 8) else { return XCTFail("past the end") }
        guard case .tensorOutOfBounds(p, "t", 64, 4, _, _)? = tensor([1], offset: 64) else { return XCTFail("offset past the end") }
        guard case .tensorOutOfBounds? = tensor([1], offset: 1 << 63) else { return XCTFail("huge offset") }
        XCTAssertTrue(GGUFError.tensorOutOfBounds(path: p, tensor: "blk.0.attn_q.weight", offset: 0, byteCount: 9, dataStart: 64, fileSize: 70)
            .description.hasPrefix("model.gguf: tensor 'blk.0.attn_q.weight' runs past the end of the file ("))
        r = Raw()
        r.header(tensors: 2, kv: 0)
        r.tensor("t", [1], 0, 0)
        r.tensor("t", [1], 0, 32)
        r.pad(); r.b += [UInt8](repeating: 0, count: 64)
        XCTAssertEqual(readError(r.b), .duplicateTensor(path: p, tensor: "t"))
        r = Raw()
        r.header(tensors: 1, kv: 0)
        r.bytes([0x41, 0xc0]); r.u32(1); r.u64(1); r.u32(0); r.u64(0)
        XCTAssertEqual(readError(r.b), .invalidUTF8(path: p, what: "the name of tensor 0", offset: 24))
        // Names with control characters are escaped in the one-line description.
        XCTAssertFalse(GGUFError.duplicateTensor(path: p, tensor: "a\nb").description.contains("\n"))

        // Files: missing, a directory, the requests on a file.
        XCTAssertThrowsError(try GGUFFile(path: dir + "/absent.gguf")) { guard case .cannotOpen? = $0 as? GGUFError else { return XCTFail("\($0)") } }
        XCTAssertThrowsError(try GGUFFile(path: dir)) { guard case .cannotOpen? = $0 as? GGUFError else { return XCTFail("\($0)") } }
        let empty = dir + "/empty.gguf"
        XCTAssertTrue(FileManager.default.createFile(atPath: empty, contents: Data()))
        XCTAssertThrowsError(try GGUFFile(path: empty)) { XCTAssertEqual($0 as? GGUFError, .truncated(path: empty, what: "the magic 'GGUF'", offset: 0)) }
        var w = GGUFWriter()
        w.addTensor(name: "q81", shape: [32], type: .q8_1, data: [UInt8](repeating: 0, count: 36))
        w.addTensor(name: "f", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6])
        let g = try GGUFFile(bytes: try w.encode(), name: p)
        XCTAssertThrowsError(try g.dequantize(g.tensors[0])) { XCTAssertEqual($0 as? GGUFError, .notDequantizable(path: p, tensor: "q81", type: .q8_1)) }
        var out = [Float](repeating: 0, count: 6)
        XCTAssertThrowsError(try g.dequantizeRows(g.tensors[1], rows: 2..<4, into: &out)) {
            XCTAssertEqual($0 as? GGUFError, .rowsOutOfRange(path: p, tensor: "f", rows: 2..<4, rowCount: 3))
        }
        try g.dequantizeRows(g.tensors[1], rows: 1..<3, into: &out)
        XCTAssertEqual(Array(out.prefix(4)), [3, 4, 5, 6])
    }

    // MARK: - Dequantisation

    /// GGMLType.quantize (q8_0, q4_0: `--quantize` of a float checkpoint) against gguf-py's
    /// quantize (Tools/make_quantize_fixtures.py), bit for bit, from an unaligned source; then
    /// dequantised, every value within half a step of its block; other types and partial blocks refused.
    func testQuantisationMatchesGGUFPyBitForBit() throws {
        XCTAssertEqual(Set(GGMLType.allCases.filter(\.isQuantizable)), [.q8_0, .q4_0])
        for type in [GGMLType.q8_0, .q4_0] {
            let x = try floats(Self.fixtures.appendingPathComponent("quantize-\(type.name).f32"))
            let expected = try [UInt8](Data(contentsOf: Self.fixtures.appendingPathComponent("quantize-\(type.name).blocks")))
            let n = x.count
            XCTAssertEqual(expected.count, type.byteCount(elements: n), type.name)
            var got = [UInt8](repeating: 0xAA, count: expected.count)
            let shifted = [Float(0)] + x
            try shifted.withUnsafeBufferPointer { src in
                try got.withUnsafeMutableBytes { try type.quantize(src.baseAddress! + 1, count: n, into: $0.baseAddress!) }
            }
            let wrong = (0..<got.count).filter { got[$0] != expected[$0] }
            XCTAssertTrue(wrong.isEmpty, "\(type.name): \(wrong.count) bytes differ from gguf-py, first at \(wrong.first ?? -1)")
            var back = [Float](repeating: .nan, count: n)
            try got.withUnsafeBytes { try type.dequantize($0.baseAddress!, count: n, into: &back) }
            for b in 0..<(n / 32) {
                let block = x[(b * 32)..<(b * 32 + 32)]
                let amax = block.map { abs($0) }.max()!
                // Half a step of rounding (q4_0: a whole step, since its quants reach −8·d on the largest
                // value's side but only 7·d on the other), plus the f16 rounding of the scale d (half an
                // ulp: d·2⁻¹¹, or 2⁻²⁵ below f16's normal range) times the largest quant (127, or 8).
                let qmax: Float = type == .q8_0 ? 127 : 8, d = amax / qmax
                let bound = (type == .q8_0 ? 0.5 : 1.0) * d + qmax * max(d * 0x1p-11, 0x1p-25)
                for j in block.indices {
                    XCTAssertLessThanOrEqual(abs(back[j] - x[j]), bound * 1.0001, "\(type.name) element \(j)")
                }
            }
        }
        var out = [UInt8](repeating: 0, count: 64)
        let x = [Float](repeating: 1, count: 64)
        XCTAssertThrowsError(try out.withUnsafeMutableBytes { try GGMLType.q8_0.quantize(x, count: 31, into: $0.baseAddress!) })
        XCTAssertThrowsError(try out.withUnsafeMutableBytes { try GGMLType.q4_K.quantize(x, count: 32, into: $0.baseAddress!) })
    }

    func testDequantisationMatchesGGUFPyBitForBit() throws {
        let types = GGMLType.allCases.filter(\.isDequantizable)
        XCTAssertEqual(Set(types), [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K])
        for type in types {
            let blocks = try [UInt8](Data(contentsOf: Self.fixtures.appendingPathComponent("\(type.name).blocks")))
            let expected = try floats(Self.fixtures.appendingPathComponent("\(type.name).f32"))
            XCTAssertEqual(blocks.count % type.typeSize, 0, type.name)
            let n = blocks.count / type.typeSize * type.blockSize
            XCTAssertEqual(n, expected.count, type.name)
            XCTAssertGreaterThan(n / type.blockSize, 10, type.name)
            // Through the type, from an odd (unaligned) address.
            var got = [Float](repeating: .nan, count: n)
            let shifted = [0] + blocks
            try shifted.withUnsafeBytes { raw in try type.dequantize(raw.baseAddress! + 1, count: n, into: &got) }
            sameBits(got, expected, type.name)
            // Through a file: whole tensor and every single row.
            var w = GGUFWriter()
            w.addTensor(name: "t", shape: [type.blockSize, n / type.blockSize], type: type, data: blocks)
            let g = try GGUFFile(bytes: try w.encode(), name: "fixture")
            let info = try XCTUnwrap(g.tensor(named: "t"))
            sameBits(try g.dequantize(info), expected, "\(type.name) file")
            var row = [Float](repeating: 0, count: type.blockSize * 2)
            for r in 0..<(info.rowCount - 1) {
                try g.dequantizeRows(info, rows: r..<r + 2, into: &row)
                sameBits(row, Array(expected[r * type.blockSize..<(r + 2) * type.blockSize]), "\(type.name) rows \(r)")
            }
        }
        // Partial blocks and undequantisable types are refused before touching memory.
        var out = [Float](repeating: 0, count: 64)
        let zeros = [UInt8](repeating: 0, count: 300)
        XCTAssertThrowsError(try zeros.withUnsafeBytes { try GGMLType.q8_0.dequantize($0.baseAddress!, count: 33, into: &out) }) {
            XCTAssertEqual($0 as? GGUFError, .notWholeBlocks(path: nil, tensor: nil, type: .q8_0, count: 33))
        }
        XCTAssertThrowsError(try zeros.withUnsafeBytes { try GGMLType.iq4_nl.dequantize($0.baseAddress!, count: 32, into: &out) }) {
            XCTAssertEqual($0 as? GGUFError, .notDequantizable(path: nil, tensor: nil, type: .iq4_nl))
        }
    }

    func testHalfAndBFloatConversionsAreExactForEveryBitPattern() throws {
        let all = (0...UInt16.max).map { $0 }
        var f16 = [Float](repeating: 0, count: all.count), bf16 = f16
        try all.withUnsafeBytes { try GGMLType.f16.dequantize($0.baseAddress!, count: all.count, into: &f16) }
        try all.withUnsafeBytes { try GGMLType.bf16.dequantize($0.baseAddress!, count: all.count, into: &bf16) }
        for h in all {
            let ref = Float(Float16(bitPattern: h))
            let got = f16[Int(h)]
            if ref.isNaN {
                // NaN: sign and payload kept, quieted (as F16C and ggml give).
                let payload = UInt32(h & 0x3ff) << 13
                XCTAssertEqual(got.bitPattern, UInt32(h & 0x8000) << 16 | 0x7fc0_0000 | payload, "f16 \(h)")
            } else {
                XCTAssertEqual(got.bitPattern, ref.bitPattern, "f16 \(h)")
            }
            XCTAssertEqual(ak_fp16_to_fp32(h).bitPattern, got.bitPattern)
            XCTAssertEqual(bf16[Int(h)].bitPattern, UInt32(h) << 16, "bf16 \(h)")
            XCTAssertEqual(ak_bf16_to_fp32(h).bitPattern, UInt32(h) << 16)
        }
    }

    func testLayoutsOfEveryType() {
        XCTAssertEqual(GGMLType.q4_K.rawValue, 12)
        XCTAssertEqual(GGMLType.bf16.rawValue, 30)
        XCTAssertEqual(GGMLType(rawValue: 4), nil)
        for t in GGMLType.allCases {
            XCTAssertEqual(t.byteCount(elements: t.blockSize * 3), t.typeSize * 3, t.name)
            XCTAssertEqual(t.byteCount(elements: 0), 0)
            if t.blockSize > 1 { XCTAssertNil(t.byteCount(elements: t.blockSize + 1)) }
            XCTAssertNil(t.byteCount(elements: -t.blockSize))
        }
        XCTAssertNil(GGMLType.f64.byteCount(elements: Int.max / 4))
        XCTAssertEqual(GGMLType.q6_K.typeSize, 210)
        XCTAssertEqual(GGMLType.q8_1.typeSize, 36)
    }

    // MARK: - Real models

    struct ModelFixture: Decodable {
        struct Tensor: Decodable { var name: String; var type: UInt32; var shape: [Int]; var offset: Int; var bytes: Int }
        struct Checked: Decodable { var name: String; var type: UInt32; var rows: [Int]; var values: String; var checksum: [String]? }
        var file: String
        var version: Int
        var tensor_count: Int
        var kv_count: Int
        var architecture: String
        var token_count: Int
        var first_tokens: [String]
        var last_token: String
        var first_scores_bits: [UInt32]?
        var tensors: [Tensor]
        var checked: [Checked]
    }

    func checkModel(_ fixture: String) throws {
        let url = Self.fixtures.appendingPathComponent("models/\(fixture).json")
        let m = try JSONDecoder().decode(ModelFixture.self, from: Data(contentsOf: url))
        let candidates = [Self.root.appendingPathComponent("data/models/\(m.file)").path]
        guard let path = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw XCTSkip("\(m.file) is not in data/models (make models)")
        }
        let start = Date()
        let g = try GGUFFile(path: path)
        let seconds = Date().timeIntervalSince(start)
        print("\(m.file): opened in \(String(format: "%.3f", seconds)) s")
        XCTAssertLessThan(seconds, 5, "opening \(m.file)")   // well under a second in release builds
        XCTAssertEqual(g.version, m.version)
        XCTAssertEqual(g.tensors.count, m.tensor_count)
        XCTAssertEqual(g.metadata.count, m.kv_count)
        XCTAssertEqual(try g.requiredString("general.architecture"), m.architecture)
        let tokens = try XCTUnwrap(try g.strings("tokenizer.ggml.tokens"))
        XCTAssertEqual(tokens.count, m.token_count)
        XCTAssertEqual(Array(tokens.prefix(8)), m.first_tokens)
        XCTAssertEqual(tokens.last, m.last_token)
        if let bits = m.first_scores_bits { XCTAssertEqual(try g.floats("tokenizer.ggml.scores")?.prefix(8).map(\.bitPattern), bits) }
        XCTAssertEqual(g.tensors.map(\.name), m.tensors.map(\.name))
        for (a, b) in zip(g.tensors, m.tensors) {
            XCTAssertEqual(a.type.rawValue, b.type, a.name)
            XCTAssertEqual(a.shape, b.shape, a.name)
            XCTAssertEqual(a.offset, b.offset, a.name)
            XCTAssertEqual(a.byteCount, b.bytes, a.name)
        }
        for c in m.checked {
            let info = try XCTUnwrap(g.tensor(named: c.name))
            XCTAssertEqual(info.type.rawValue, c.type)
            let expected = try floats(Self.fixtures.appendingPathComponent("models/\(c.values)"))
            var got = [Float]()
            var row = [Float](repeating: 0, count: info.rowLength)
            for r in c.rows {
                try g.dequantizeRows(info, rows: r..<r + 1, into: &row)
                got += row
            }
            sameBits(got, expected, "\(m.file) \(c.name) rows \(c.rows)")
            if let sums = c.checksum {
                let all = try g.dequantize(info)
                var s1: UInt64 = 0, s2: UInt64 = 0
                for (i, x) in all.enumerated() {
                    s1 &+= UInt64(x.bitPattern)
                    s2 &+= UInt64(x.bitPattern) &* UInt64(i + 1)
                }
                XCTAssertEqual([String(s1), String(s2)], sums, "\(m.file) \(c.name) checksum")
                XCTAssertNil(all.firstIndex { !$0.isFinite }, c.name)
            }
        }
    }

    func testSmolLM2() throws { try checkModel("SmolLM2-135M-Instruct.Q4_1") }

    /// The damaged copies reference-pretrained/check.py makes of the smaller model, each refused by name.
    func testDamagedCopiesOfARealModel() throws {
        let path = Self.root.appendingPathComponent("data/models/SmolLM2-135M-Instruct.Q4_1.gguf").path
        guard let model = [path].first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw XCTSkip("SmolLM2-135M-Instruct.Q4_1.gguf is not in data/models (make models)")
        }
        let raw = try [UInt8](Data(contentsOf: URL(fileURLWithPath: model)))
        func le64(_ x: UInt64) -> [UInt8] { withUnsafeBytes(of: x.littleEndian, Array.init) }
        let damaged: [(String, [UInt8], (GGUFError) -> Bool)] = [
            ("truncated to half", Array(raw.prefix(raw.count / 2)), { if case .tensorOutOfBounds = $0 { true } else { false } }),
            ("truncated inside the header", Array(raw.prefix(4096)), {
                switch $0 { case .absurdCount, .absurdLength, .truncated: true; default: false }   // 272 tensor infos cannot fit in 4 KB
            }),
            ("wrong magic", Array("GGUX".utf8) + raw[4..<4096], { if case .badMagic = $0 { true } else { false } }),
            ("absurd tensor count", Array(raw[0..<8]) + le64(1 << 60) + raw[16..<4096], { if case .absurdCount = $0 { true } else { false } }),
            ("absurd metadata count", Array(raw[0..<16]) + le64(1 << 61) + raw[24..<4096], { if case .absurdCount = $0 { true } else { false } }),
            ("unsupported version", Array(raw[0..<4]) + [99, 0, 0, 0] + raw[8..<4096], { if case .unsupportedVersion = $0 { true } else { false } }),
        ]
        for (why, bytes, expected) in damaged {
            let file = dir + "/m.gguf"
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            XCTAssertThrowsError(try GGUFFile(path: file), why) { error in
                guard let e = error as? GGUFError else { return XCTFail("\(why): untyped \(error)") }
                XCTAssertTrue(expected(e), "\(why): \(e)")
                XCTAssertTrue(e.description.hasPrefix(file + ": ") && !e.description.contains("\n"), e.description)
            }
        }
    }

    /// Every file of the GGUF fuzz corpus reads, or is refused with a typed error.
    func testFuzzCorpusReplays() throws {
        let corpus = Self.root.appendingPathComponent("Fuzz/corpus/gguf").path
        let names = try FileManager.default.contentsOfDirectory(atPath: corpus).sorted()
        XCTAssertGreaterThanOrEqual(names.count, 3)
        var valid = 0
        for name in names {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: corpus + "/" + name)))
            do {
                let g = try GGUFFile(bytes: bytes, name: name)
                valid += 1
                for t in g.tensors where t.type.isDequantizable { XCTAssertEqual(try g.dequantize(t).count, t.elementCount, name) }
            } catch { XCTAssertNotNil(error as? GGUFError, "\(name): \(error)") }
        }
        XCTAssertGreaterThanOrEqual(valid, 3)
    }
    func testGemma3() throws { try checkModel("gemma-3-270m-q4_k_m") }

    /// The header and tensor-table refusals asserted field by field (the damage tests above match
    /// some of them only by pattern): where the file ends, the counts it claims, the bytes a tensor
    /// needs against the bytes the file has.
    func testHeaderAndTensorRefusalsCarryEveryField() {
        let p = "model.gguf"
        XCTAssertEqual(readError(Array("GGUF".utf8) + [3, 0]), .truncated(path: p, what: "the version", offset: 4))
        var r = Raw()
        r.b += Array("GGUF".utf8); r.u32(3); r.u32(0)
        XCTAssertEqual(readError(r.b), .truncated(path: p, what: "the tensor count", offset: 8))
        r = Raw()
        r.header(tensors: 1 << 60, kv: 0)
        XCTAssertEqual(readError(r.b), .absurdCount(path: p, what: "tensor", count: 1 << 60, remaining: 0))
        r = Raw()
        r.header(tensors: 0, kv: 5)
        r.b += [UInt8](repeating: 0, count: 10)
        XCTAssertEqual(readError(r.b), .absurdCount(path: p, what: "metadata", count: 5, remaining: 10))
        r = Raw()
        r.header(tensors: 0, kv: 1)
        r.u64(1 << 20); r.b += [UInt8](repeating: 0x41, count: 16)
        XCTAssertEqual(readError(r.b), .absurdLength(path: p, what: "the key of metadata pair 0", length: 1 << 20, offset: 24))
        // A q8_0 tensor of 64 values (2 blocks of 34 bytes) with 64 bytes of data: the tensor info
        // ends at byte 24 + 9 + 4 + 16 + 4 + 8 = 65, so the data starts at 96 and the file has 160.
        r = Raw()
        r.header(tensors: 1, kv: 0)
        r.tensor("t", [32, 2], 8, 0)
        r.pad()
        r.b += [UInt8](repeating: 0, count: 64)
        XCTAssertEqual(readError(r.b), .tensorOutOfBounds(path: p, tensor: "t", offset: 0, byteCount: 68, dataStart: 96, fileSize: 160))
    }
}
