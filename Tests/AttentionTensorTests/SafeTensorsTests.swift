import AttentionTensor
import Foundation
import XCTest

final class SafeTensorsTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "safetensors-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// A file's bytes: the 8-byte little-endian length, `header` as UTF-8, then `buffer`.
    func file(_ header: String, _ buffer: [UInt8] = []) -> [UInt8] {
        let text = Array(header.utf8)
        return withUnsafeBytes(of: UInt64(text.count).littleEndian, Array.init) + text + buffer
    }

    /// One entry's header text.
    func entry(_ name: String, _ dtype: String, _ shape: [Int], _ begin: Int, _ end: Int) -> String {
        "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":[\(begin),\(end)]}"
    }

    func le<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) } }

    /// The problem `body` throws, or nil (a non-SafeTensorsError also gives nil, failing the comparison).
    func problem(_ body: () throws -> Void) -> SafeTensorsProblem? {
        do { try body(); return nil } catch let e as SafeTensorsError { return e.problem } catch { return nil }
    }

    /// The problem reading `bytes` (as "model.safetensors") throws.
    func readProblem(_ bytes: [UInt8]) -> SafeTensorsProblem? {
        problem { _ = try SafeTensors.read(bytes: bytes, name: "model.safetensors") }
    }

    func bits(_ xs: [Float]) -> [UInt32] { xs.map(\.bitPattern) }

    // MARK: - Round trips

    func testRoundTripOddShapesThroughAFile() throws {
        let tensors: [(name: String, tensor: Tensor)] = [
            ("one", try Tensor.randomNormal([1], seed: 1)),
            ("wide.weight", try Tensor.randomNormal([7, 33], seed: 2)),
            ("empty", try Tensor(zeros: [0, 5])),
            ("scalar", try Tensor(shape: [], scalars: [-4.25])),
            ("after.empty", try Tensor(shape: [2], scalars: [.infinity, -.nan])),
        ]
        let path = dir + "/model.safetensors"
        try SafeTensors.write(tensors, to: path)
        let archive = try SafeTensors.read(path)
        // Written and listed in the order given.
        XCTAssertEqual(archive.names, tensors.map(\.name))
        XCTAssertEqual(archive.metadata, [:])
        for (name, t) in tensors {
            XCTAssertEqual(archive.entry(name)?.dtype, .f32)
            XCTAssertEqual(archive.entry(name)?.shape, t.shape)
            let back = try archive.tensor(name)
            XCTAssertEqual(back.shape, t.shape, name)
            XCTAssertEqual(bits(back.scalars), bits(t.scalars), name)
        }
        XCTAssertEqual(archive.entry("empty")?.dataOffsets, (1 + 7 * 33) * 4..<(1 + 7 * 33) * 4)
        XCTAssertEqual(try archive.tensors().map(\.name), tensors.map(\.name))

        // The header is padded with spaces so the data buffer starts 8-byte aligned.
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let n = Int(bytes[0]) | Int(bytes[1]) << 8
        XCTAssertEqual((8 + n) % 8, 0)
        XCTAssertEqual(bytes.count, 8 + n + (1 + 7 * 33 + 0 + 1 + 2) * 4)
        XCTAssertEqual(bytes[8], UInt8(ascii: "{"))
        XCTAssertTrue(bytes[8..<8 + n].reversed().drop { $0 == 0x20 }.first == UInt8(ascii: "}"))
        // The same bytes as encode, and as reading them from memory.
        XCTAssertEqual(try SafeTensors.encode(tensors), bytes)
        XCTAssertEqual(try SafeTensors.read(bytes: bytes).names, archive.names)
    }

    func testWritesViewsInRowMajorOrderAndOverwrites() throws {
        let t = try Tensor.randomNormal([2, 3, 5, 7], seed: 3)
        let view = try t.heads(1..<3).rows(2..<4)
        let path = dir + "/v.safetensors"
        try SafeTensors.write([("t", t)], to: path)
        try SafeTensors.write([("view", view), ("transposed", try Tensor.randomNormal([3, 4], seed: 4).transposed())], to: path)
        let archive = try SafeTensors.read(path)
        XCTAssertEqual(archive.names, ["view", "transposed"])
        XCTAssertEqual(try archive.tensor("view").scalars, view.scalars)
        XCTAssertEqual(try archive.tensor("transposed").shape, [4, 3])
    }

    func testMetadataAndUnusualNamesRoundTrip() throws {
        let metadata = ["format": "pt", "quote\"and\\slash": "line\nbreak\ttab\u{1}", "ünïcødé 🙂": ""]
        let names = ["a\"b", "back\\slash", "new\nline", "🙂.weight", "__metadata", "x/y.z"]
        let tensors = try names.enumerated().map { ($0.element, try Tensor(filling: Float($0.offset), [2])) }
        let path = dir + "/meta.safetensors"
        try SafeTensors.write(tensors, metadata: metadata, to: path)
        let archive = try SafeTensors.read(path)
        XCTAssertEqual(archive.metadata, metadata)
        XCTAssertEqual(archive.names, names)
        XCTAssertEqual(try archive.tensor("new\nline").scalars, [2, 2])
        // Escaped as serde_json escapes: short forms, \u00XX for other control characters.
        let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
        XCTAssertTrue(text.contains(#""line\nbreak\ttab\u0001""#))
        XCTAssertTrue(text.contains(#""__metadata__":{"format":"pt","quote\"and\\slash""#))
    }

    // MARK: - Decoding

    /// safetensors 0.8.0 (`safetensors.numpy.save`, numpy 2.4) wrote these bytes for
    /// half = float16 [1, -2, 2^-24, 1023·2^-24, 65504, inf, -inf, -0, nan];
    /// double = float64 [[0.1, -1.5], [1e-40, 3.4028234663852886e38]]; single = float32 [[1.5, -2, 0.25]];
    /// scalar = float32 7 (shape ()); empty = float32 zeros (0, 3); ids = int64 [-1, 2^40];
    /// small = int32 [-7, 9]; mask = bool [T, F, T]; bytes = uint8 [0, 255]; metadata {"format": "np"}.
    static let pythonMixed: [UInt8] = [
        0x38, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x5f, 0x5f, 0x6d, 0x65, 0x74, 0x61, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x5f, 0x22, 0x3a,
        0x7b, 0x22, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x22, 0x3a, 0x22, 0x6e, 0x70, 0x22, 0x7d, 0x2c, 0x22, 0x69, 0x64, 0x73, 0x22, 0x3a, 0x7b, 0x22,
        0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x49, 0x36, 0x34, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x5d,
        0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x30, 0x2c, 0x31, 0x36, 0x5d, 0x7d, 0x2c,
        0x22, 0x64, 0x6f, 0x75, 0x62, 0x6c, 0x65, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x36, 0x34, 0x22, 0x2c,
        0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x2c, 0x32, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73,
        0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x31, 0x36, 0x2c, 0x34, 0x38, 0x5d, 0x7d, 0x2c, 0x22, 0x65, 0x6d, 0x70, 0x74, 0x79, 0x22, 0x3a, 0x7b, 0x22,
        0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x33, 0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x30, 0x2c,
        0x33, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x34, 0x38, 0x2c, 0x34, 0x38,
        0x5d, 0x7d, 0x2c, 0x22, 0x73, 0x63, 0x61, 0x6c, 0x61, 0x72, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x33,
        0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73,
        0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x34, 0x38, 0x2c, 0x35, 0x32, 0x5d, 0x7d, 0x2c, 0x22, 0x73, 0x69, 0x6e, 0x67, 0x6c, 0x65, 0x22, 0x3a, 0x7b,
        0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x33, 0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x31,
        0x2c, 0x33, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x35, 0x32, 0x2c, 0x36,
        0x34, 0x5d, 0x7d, 0x2c, 0x22, 0x73, 0x6d, 0x61, 0x6c, 0x6c, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x49, 0x33,
        0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66,
        0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x36, 0x34, 0x2c, 0x37, 0x32, 0x5d, 0x7d, 0x2c, 0x22, 0x68, 0x61, 0x6c, 0x66, 0x22, 0x3a, 0x7b, 0x22,
        0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x31, 0x36, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x39, 0x5d,
        0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x37, 0x32, 0x2c, 0x39, 0x30, 0x5d, 0x7d,
        0x2c, 0x22, 0x62, 0x79, 0x74, 0x65, 0x73, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x55, 0x38, 0x22, 0x2c, 0x22,
        0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73,
        0x22, 0x3a, 0x5b, 0x39, 0x30, 0x2c, 0x39, 0x32, 0x5d, 0x7d, 0x2c, 0x22, 0x6d, 0x61, 0x73, 0x6b, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70,
        0x65, 0x22, 0x3a, 0x22, 0x42, 0x4f, 0x4f, 0x4c, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x33, 0x5d, 0x2c, 0x22, 0x64,
        0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x39, 0x32, 0x2c, 0x39, 0x35, 0x5d, 0x7d, 0x7d, 0x20, 0x20,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0xbf, 0x9c, 0x57, 0x77, 0x27, 0x26, 0x6c, 0xa1, 0x37, 0x00, 0x00, 0x00, 0xe0, 0xff, 0xff, 0xef, 0x47,
        0x00, 0x00, 0xe0, 0x40, 0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x80, 0x3e, 0xf9, 0xff, 0xff, 0xff, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x03, 0xff, 0x7b, 0x00, 0x7c, 0x00, 0xfc, 0x00, 0x80, 0x00, 0x7e, 0x00, 0xff, 0x01, 0x00, 0x01,
    ]

    /// safetensors 0.8.0 for {"a.weight": arange(6).reshape(2, 3) / 4 - 0.5, "b": [3.5], "c": -1 (shape ())},
    /// all float32, metadata {"format": "pt"}.
    static let pythonFloat32: [UInt8] = [
        0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x5f, 0x5f, 0x6d, 0x65, 0x74, 0x61, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x5f, 0x22, 0x3a,
        0x7b, 0x22, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x22, 0x3a, 0x22, 0x70, 0x74, 0x22, 0x7d, 0x2c, 0x22, 0x61, 0x2e, 0x77, 0x65, 0x69, 0x67, 0x68,
        0x74, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x33, 0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65,
        0x22, 0x3a, 0x5b, 0x32, 0x2c, 0x33, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b,
        0x30, 0x2c, 0x32, 0x34, 0x5d, 0x7d, 0x2c, 0x22, 0x62, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x33, 0x32,
        0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x31, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73,
        0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x32, 0x34, 0x2c, 0x32, 0x38, 0x5d, 0x7d, 0x2c, 0x22, 0x63, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70,
        0x65, 0x22, 0x3a, 0x22, 0x46, 0x33, 0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74,
        0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x32, 0x38, 0x2c, 0x33, 0x32, 0x5d, 0x7d, 0x7d, 0x20, 0x20, 0x20, 0x20,
        0x00, 0x00, 0x00, 0xbf, 0x00, 0x00, 0x80, 0xbe, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x40, 0x3f,
        0x00, 0x00, 0x60, 0x40, 0x00, 0x00, 0x80, 0xbf,
    ]

    func testReadsWhatThePythonLibraryWrites() throws {
        let archive = try SafeTensors.read(bytes: Self.pythonMixed, name: "mixed.safetensors")
        // Buffer order (Python orders by dtype alignment, then name); the empty tensor precedes the
        // scalar at the same offset.
        XCTAssertEqual(archive.names, ["ids", "double", "empty", "scalar", "single", "small", "half", "bytes", "mask"])
        XCTAssertEqual(archive.metadata, ["format": "np"])
        XCTAssertEqual(archive.entry("double"), SafeTensorsArchive.Entry(dtype: .f64, shape: [2, 2], dataOffsets: 16..<48))

        let half = try archive.tensor("half").scalars
        XCTAssertEqual(bits(Array(half.prefix(8))),
                       bits([1, -2, 0x1p-24, 1023 * 0x1p-24, 65504, .infinity, -.infinity, -0.0]))
        XCTAssertTrue(half[2].isSubnormal == false && half[3] < Float(Float16.leastNormalMagnitude))
        XCTAssertTrue(half[8].isNaN)

        let double = try archive.tensor("double")
        XCTAssertEqual(double.shape, [2, 2])
        XCTAssertEqual(bits(double.scalars), bits([Float(0.1), -1.5, Float(1e-40), .greatestFiniteMagnitude]))
        XCTAssertTrue(double.scalars[2].isSubnormal)

        XCTAssertEqual(try archive.tensor("single").scalars, [1.5, -2, 0.25])
        XCTAssertEqual(try archive.tensor("scalar").shape, [])
        XCTAssertEqual(try archive.tensor("scalar").scalars, [7])
        XCTAssertEqual(try archive.tensor("empty").shape, [0, 3])
        XCTAssertEqual(try archive.integers("ids"), [-1, 1 << 40])
        XCTAssertEqual(try archive.integers("small"), [-7, 9])
        XCTAssertEqual(try archive.integers("mask"), [1, 0, 1])
        XCTAssertEqual(try archive.integers("bytes"), [0, 255])

        // Integers are not floats and back; all-float conversion names the first that is not.
        XCTAssertEqual(problem { _ = try archive.tensor("ids") }, .unsupportedDType(tensor: "ids", dtype: .i64))
        XCTAssertEqual(problem { _ = try archive.integers("half") }, .notIntegers(tensor: "half", dtype: .f16))
        XCTAssertEqual(problem { _ = try archive.tensors() }, .unsupportedDType(tensor: "ids", dtype: .i64))
        XCTAssertEqual(problem { _ = try archive.tensor("missing") }, .tensorNotFound("missing"))
        XCTAssertEqual(problem { _ = try archive.integers("missing") }, .tensorNotFound("missing"))
        XCTAssertNil(archive.entry("missing"))
    }

    func testWritesWhatThePythonLibraryWrites() throws {
        let archive = try SafeTensors.read(bytes: Self.pythonFloat32)
        XCTAssertEqual(archive.names, ["a.weight", "b", "c"])
        XCTAssertEqual(try archive.tensor("a.weight").scalars, [-0.5, -0.25, 0, 0.25, 0.5, 0.75])
        // With the names in Python's order, the writer's bytes are Python's, padding included.
        let tensors = try archive.names.map { ($0, try archive.tensor($0)) }
        XCTAssertEqual(try SafeTensors.encode(tensors, metadata: archive.metadata), Self.pythonFloat32)
        let path = dir + "/same.safetensors"
        try SafeTensors.write(tensors, metadata: ["format": "pt"], to: path)
        XCTAssertEqual(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))), Self.pythonFloat32)
    }

    func testDecodesBFloat16Exactly() throws {
        // 1, -3, the smallest subnormal, the largest finite, -inf, a NaN.
        let raw: [UInt16] = [0x3f80, 0xc040, 0x0001, 0x7f7f, 0xff80, 0x7fc0]
        let archive = try SafeTensors.read(bytes: file("{" + entry("b", "BF16", [2, 3], 0, 12) + "}", le(raw)))
        let t = try archive.tensor("b")
        XCTAssertEqual(t.shape, [2, 3])
        XCTAssertEqual(bits(Array(t.scalars.prefix(5))), [0x3f80_0000, 0xc040_0000, 0x0001_0000, 0x7f7f_0000, 0xff80_0000])
        XCTAssertTrue(t.scalars[2].isSubnormal)
        XCTAssertTrue(t.scalars[5].isNaN)
    }

    func testFloat64BeyondFloat32RangeIsRefusedNotInfinite() throws {
        let halfUlp = 0x1p103   // half the gap between Float's largest finite value and 2^128
        let maxFloat = Double(Float.greatestFiniteMagnitude)
        func read(_ values: [Double]) throws -> Tensor {
            let bytes = file("{" + entry("w", "F64", [values.count], 0, 8 * values.count) + "}", le(values.map(\.bitPattern)))
            return try SafeTensors.read(bytes: bytes, name: "model.safetensors").tensor("w")
        }
        // Just under the rounding boundary rounds down to the largest Float; the boundary rounds to inf.
        XCTAssertEqual(try read([maxFloat + halfUlp / 2, -(maxFloat + halfUlp / 2)]).scalars, [.greatestFiniteMagnitude, -.greatestFiniteMagnitude])
        XCTAssertEqual(problem { _ = try read([1, maxFloat + halfUlp]) }, .outOfFloatRange(tensor: "w", index: 1, value: maxFloat + halfUlp))
        XCTAssertEqual(problem { _ = try read([0, 0, -1e39]) }, .outOfFloatRange(tensor: "w", index: 2, value: -1e39))
        // Infinities and NaN are values, not overflow; below Float's subnormals rounds to ±0.
        let special = try read([.infinity, -.infinity, .nan, 1e-50, -1e-50]).scalars
        XCTAssertEqual(bits(Array(special.prefix(2))), bits([.infinity, -.infinity]))
        XCTAssertTrue(special[2].isNaN)
        XCTAssertEqual(bits(Array(special.suffix(2))), bits([0, -0.0]))
        do { _ = try read([1e300]) } catch {
            XCTAssertEqual("\(error)", "model.safetensors: tensor 'w': element 0 is 1e+300, beyond Float32's range (±3.4028235e+38)")
        }
    }

    func testSubByteDTypesFillWholeBytes() throws {
        // F4 packs two elements a byte, F6 four in three bytes, as the reference lays them out.
        let archive = try SafeTensors.read(bytes: file("{" + entry("q", "F4", [2, 3], 0, 3) + "," + entry("s", "F6_E2M3", [4], 3, 6) + "}",
                                                       [1, 2, 3, 4, 5, 6]))
        XCTAssertEqual(archive.entry("q")?.dataOffsets, 0..<3)
        XCTAssertEqual(problem { _ = try archive.tensor("q") }, .unsupportedDType(tensor: "q", dtype: .f4))
        XCTAssertEqual(readProblem(file("{" + entry("q", "F4", [3], 0, 2) + "}", [0, 0])), .partialByte(tensor: "q", dtype: .f4, shape: [3]))
        XCTAssertEqual(readProblem(file("{" + entry("q", "F4", [4], 0, 4) + "}", [0, 0, 0, 0])),
                       .byteCountMismatch(tensor: "q", dtype: .f4, shape: [4], begin: 0, end: 4))
        do { _ = try SafeTensors.read(bytes: file("{" + entry("q", "F6_E3M2", [3], 0, 3) + "}", [0, 0, 0]), name: "m") } catch {
            XCTAssertEqual("\(error)", "m: tensor 'q': F6_E3M2 [3] is 18 bits, not a whole number of bytes")
        }
    }

    func testIntegerDTypes() throws {
        let header = "{" + [entry("u64", "U64", [2], 0, 16), entry("i16", "I16", [2], 16, 20), entry("u16", "U16", [1], 20, 22),
                            entry("i8", "I8", [2], 22, 24), entry("u32", "U32", [1], 24, 28)].joined(separator: ",") + "}"
        let buffer = le([UInt64(5), UInt64.max]) + le([Int16(-300), Int16(7)]) + le([UInt16(65535)]) + le([Int8(-128), Int8(127)]) + le([UInt32.max])
        let archive = try SafeTensors.read(bytes: file(header, buffer), name: "ints")
        XCTAssertEqual(problem { _ = try archive.integers("u64") }, .outOfIntRange(tensor: "u64", index: 1, value: .max))
        XCTAssertEqual(try archive.integers("i16"), [-300, 7])
        XCTAssertEqual(try archive.integers("u16"), [65535])
        XCTAssertEqual(try archive.integers("i8"), [-128, 127])
        XCTAssertEqual(try archive.integers("u32"), [Int(UInt32.max)])
    }

    func testEmptyFileAndJSONEscapes() throws {
        // No tensors and no buffer is a valid file; a byte no tensor covers is not.
        XCTAssertEqual(try SafeTensors.read(bytes: file("{}")).names, [])
        XCTAssertEqual(readProblem(file("{}", [0])), .unreferencedBytes(begin: 0, end: 1))
        // Escapes, surrogate pairs, whitespace and padding as any JSON writer may produce them.
        let header = " {\n\t\"caf\\u00e9 \\ud83d\\ude00\\/\" : { \"shape\" : [ 1 ] , \"data_offsets\":[0,4], \"dtype\":\"F32\"} ,"
            + "\"__metadata__\": {\"k\\n\": \"v\\\"\"}}   \r\n"
        let archive = try SafeTensors.read(bytes: file(header, le([Float(2).bitPattern])))
        XCTAssertEqual(archive.names, ["café 😀/"])
        XCTAssertEqual(archive.metadata, ["k\n": "v\""])
        XCTAssertEqual(try archive.tensor("café 😀/").scalars, [2])
        // A null __metadata__ is "none", as in the reference implementation.
        XCTAssertEqual(try SafeTensors.read(bytes: file(#"{"__metadata__":null}"#)).metadata, [:])
    }

    // MARK: - Malformed files, one problem each

    func testTruncatedAndOversizedHeaderLengths() throws {
        XCTAssertEqual(readProblem([1, 2, 3, 4, 5]), .truncatedHeaderLength(fileSize: 5))
        XCTAssertEqual(readProblem([]), .truncatedHeaderLength(fileSize: 0))
        XCTAssertEqual(readProblem(le([UInt64(100)]) + Array(repeating: 0x20, count: 10)), .headerPastEnd(length: 100, available: 10))
        XCTAssertEqual(readProblem(le([UInt64(100_000_001)])), .headerTooLarge(length: 100_000_001))
        XCTAssertEqual(readProblem(le([UInt64.max])), .headerTooLarge(length: .max))
        // The same checks on a file: the header length is refused before anything is allocated for it.
        let short = dir + "/short.safetensors"
        _ = FileManager.default.createFile(atPath: short, contents: Data([7, 0, 0]))
        XCTAssertEqual(problem { _ = try SafeTensors.read(short) }, .truncatedHeaderLength(fileSize: 3))
        let past = dir + "/past.safetensors"
        _ = FileManager.default.createFile(atPath: past, contents: Data(le([UInt64(99_999_999)]) + Array("{}".utf8)))
        XCTAssertEqual(problem { _ = try SafeTensors.read(past) }, .headerPastEnd(length: 99_999_999, available: 2))
    }

    func testHeaderThatIsNotAJSONObject() throws {
        XCTAssertEqual(readProblem(file("{\"a\":")), .malformedJSON(offset: 5, reason: "the header ends where a value should start"))
        XCTAssertEqual(readProblem(file("{\"a\" 1}")), .malformedJSON(offset: 5, reason: "expected ':' after a key"))
        XCTAssertEqual(readProblem(file("{\"a\":01}")), .malformedJSON(offset: 5, reason: "leading zero in a number"))
        XCTAssertEqual(readProblem(file("{}\0\0")), .malformedJSON(offset: 2, reason: "unexpected '0x0' after the header object"))
        XCTAssertEqual(readProblem(file("{\"\\ud800\":1}")), .malformedJSON(offset: 8, reason: "unpaired surrogate in a \\u escape"))
        XCTAssertEqual(readProblem(file("{\"a\tb\":1}")), .malformedJSON(offset: 3, reason: "unescaped control character 0x9 in a string"))
        XCTAssertEqual(readProblem(file("{\"a\":" + String(repeating: "[", count: 100))),
                       .malformedJSON(offset: 68, reason: "nested deeper than 64 levels"))
        XCTAssertEqual(readProblem(le([UInt64(3)]) + [0x7b, 0xff, 0x7d]), .headerNotUTF8)
        XCTAssertEqual(readProblem(file("[1]")), .headerNotObject(found: "an array"))
        XCTAssertEqual(readProblem(file("\"x\"")), .headerNotObject(found: "the string \"x\""))
        XCTAssertEqual(readProblem(file("")), .malformedJSON(offset: 0, reason: "the header ends where a value should start"))
    }

    func testMalformedEntries() throws {
        let four: [UInt8] = [0, 0, 0, 0]
        XCTAssertEqual(readProblem(file("{\"a\":3}")), .entryNotObject(tensor: "a", found: "3"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", four)), .missingField(tensor: "a", field: "data_offsets"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"offset\":0}}", four)),
                       .unexpectedField(tensor: "a", field: "offset"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", four)),
                       .duplicateField(tensor: "a", field: "dtype"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", four)),
                       .wrongFieldType(tensor: "a", field: "dtype", found: "32"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", four)),
                       .wrongFieldType(tensor: "a", field: "shape", found: "the string \"1\""))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", four)),
                       .wrongFieldType(tensor: "a", field: "data_offsets", found: "an array of more than two"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", four)),
                       .wrongFieldType(tensor: "a", field: "data_offsets", found: "an array of 1"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"begin\":0}}}", four)),
                       .wrongFieldType(tensor: "a", field: "data_offsets", found: "an object"))
        // Values are checked as they are read: a wrong entry is reported even if the JSON breaks later.
        XCTAssertEqual(readProblem(file("{\"a\":3,")), .entryNotObject(tensor: "a", found: "3"))
        XCTAssertEqual(readProblem(file("{" + entry("a", "Q4_K", [2], 0, 1) + "}", [0])), .unknownDType(tensor: "a", dtype: "Q4_K"))
        XCTAssertEqual(readProblem(file("{" + entry("a", "f32", [1], 0, 4) + "}", four)), .unknownDType(tensor: "a", dtype: "f32"))
        XCTAssertEqual(readProblem(file("{" + entry("a", "F32", [1], 0, 4) + "," + entry("a", "F32", [1], 4, 8) + "}", four + four)),
                       .duplicateName("a"))
        XCTAssertEqual(readProblem(file("{\"__metadata__\":{\"k\":1}}")), .malformedMetadata(key: "k"))
        XCTAssertEqual(readProblem(file("{\"__metadata__\":[]}")), .malformedMetadata(key: nil))
        XCTAssertEqual(readProblem(file("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}")), .duplicateMetadataKey("k"))
        XCTAssertEqual(readProblem(file("{\"__metadata__\":{},\"__metadata__\":{}}")), .duplicateName("__metadata__"))
    }

    func testMalformedShapes() throws {
        XCTAssertEqual(readProblem(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}")),
                       .invalidDimension(tensor: "w", found: "-3"))
        XCTAssertEqual(readProblem(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", Array(repeating: 0, count: 8))),
                       .invalidDimension(tensor: "w", found: "2.0"))
        XCTAssertEqual(readProblem(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]}}")),
                       .invalidDimension(tensor: "w", found: "true"))
        XCTAssertEqual(readProblem(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}")),
                       .invalidDimension(tensor: "w", found: "99999999999999999999"))
        // NumPy's 64 dimensions at most: a shape of a million 1s is refused at the 65th.
        XCTAssertEqual(try SafeTensors.read(bytes: file("{" + entry("w", "F32", Array(repeating: 1, count: 64), 0, 4) + "}", [0, 0, 0, 0]))
                        .entry("w")?.shape.count, 64)
        XCTAssertEqual(readProblem(file("{" + entry("w", "F32", Array(repeating: 1, count: 1_000_000), 0, 4) + "}", [0, 0, 0, 0])),
                       .tooManyDimensions(tensor: "w"))
        XCTAssertEqual(readProblem(file("{" + entry("w", "F32", [1 << 32, 1 << 32], 0, 4) + "}")),
                       .shapeOverflow(tensor: "w", shape: [1 << 32, 1 << 32]))
        // Zero elements, but strides would still overflow: no such tensor is meant.
        XCTAssertEqual(readProblem(file("{" + entry("w", "F32", [0, 1 << 32, 1 << 32], 0, 0) + "}")),
                       .shapeOverflow(tensor: "w", shape: [0, 1 << 32, 1 << 32]))
    }

    func testMalformedOffsets() throws {
        let eight = [UInt8](repeating: 0, count: 8)
        XCTAssertEqual(readProblem(file("{" + entry("a", "F32", [4], 0, 16) + "}", eight)),
                       .offsetsPastEnd(tensor: "a", begin: 0, end: 16, bufferSize: 8))
        XCTAssertEqual(readProblem(file("{" + entry("a", "F32", [1], 8, 4) + "}", eight)), .offsetsReversed(tensor: "a", begin: 8, end: 4))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", eight)),
                       .invalidOffset(tensor: "a", found: "-4"))
        XCTAssertEqual(readProblem(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}}", eight)),
                       .invalidOffset(tensor: "a", found: "18446744073709551616"))
        // Wrong byte count, with the message a user acts on.
        let wrong = file("{" + entry("lm_head.weight", "F32", [3, 4], 0, 40) + "}", Array(repeating: 0, count: 40))
        XCTAssertEqual(readProblem(wrong), .byteCountMismatch(tensor: "lm_head.weight", dtype: .f32, shape: [3, 4], begin: 0, end: 40))
        do { _ = try SafeTensors.read(bytes: wrong, name: "model.safetensors") } catch {
            XCTAssertEqual("\(error)", "model.safetensors: tensor 'lm_head.weight': data_offsets [0, 40] hold 40 bytes but F32 [3, 4] needs 48")
        }
        // Overlap, gap, tail.
        let twelve = [UInt8](repeating: 0, count: 12)
        XCTAssertEqual(readProblem(file("{" + entry("b", "F32", [2], 4, 12) + "," + entry("a", "F32", [2], 0, 8) + "}", twelve)),
                       .overlappingTensors("a", "b"))
        XCTAssertEqual(readProblem(file("{" + entry("a", "F32", [2], 0, 8) + "," + entry("e", "F32", [0], 4, 4) + "}", eight)),
                       .overlappingTensors("a", "e"))
        XCTAssertEqual(readProblem(file("{" + entry("a", "F32", [1], 4, 8) + "}", eight)), .unreferencedBytes(begin: 0, end: 4))
        XCTAssertEqual(readProblem(file("{" + entry("a", "F32", [1], 0, 4) + "," + entry("b", "F32", [1], 8, 12) + "}", twelve)),
                       .unreferencedBytes(begin: 4, end: 8))
        XCTAssertEqual(readProblem(file("{" + entry("a", "F32", [1], 0, 4) + "}", eight)), .unreferencedBytes(begin: 4, end: 8))
    }

    func testErrorsNameTheFileAndStayOnOneLine() throws {
        let path = dir + "/bad.safetensors"
        _ = FileManager.default.createFile(atPath: path, contents: Data(file("{\"new\\nline\":3}")))
        do { _ = try SafeTensors.read(path); XCTFail("read a bad file") } catch {
            XCTAssertEqual("\(error)", "\(path): tensor 'new\\nline': entry is 3, not an object")
        }
        if case .cannotOpen? = problem({ _ = try SafeTensors.read(self.dir + "/missing.safetensors") }) {} else { XCTFail("missing") }
        XCTAssertEqual(problem { _ = try SafeTensors.read(self.dir) }, .cannotOpen("not a regular file"))
    }

    func testConversionsRespectTheMemoryBudget() throws {
        // 32 Mi F16 elements: 64 MiB read, 128 MiB as Float32, over a 96 MiB budget.
        let n = 32 << 20
        var bytes = file("{" + entry("big", "F16", [n], 0, 2 * n) + "}")
        bytes += [UInt8](repeating: 0, count: 2 * n)
        let archive = try SafeTensors.read(bytes: bytes, name: "big.safetensors")
        let saved = MemoryBudget.limitBytes
        defer { MemoryBudget.limitBytes = saved }
        MemoryBudget.limitBytes = 96 << 20
        XCTAssertEqual(problem { _ = try archive.tensor("big") }, .overMemoryBudget(tensor: "big", bytes: 4 * n))
        XCTAssertEqual(problem { _ = try archive.tensors() }, .overMemoryBudget(tensor: nil, bytes: 4 * n))
        // Reading the file itself: its buffer is over a 32 MiB budget.
        let path = dir + "/big.safetensors"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        MemoryBudget.limitBytes = 32 << 20
        XCTAssertEqual(problem { _ = try SafeTensors.read(path) }, .overMemoryBudget(tensor: nil, bytes: 2 * n))
    }

    // MARK: - Writing

    func testWriterRefusesBadNamesBeforeCreatingAnything() throws {
        let t = try Tensor(zeros: [2])
        let path = dir + "/names.safetensors"
        XCTAssertEqual(problem { try SafeTensors.write([("", t)], to: path) }, .invalidName(""))
        XCTAssertEqual(problem { try SafeTensors.write([("__metadata__", t)], to: path) }, .invalidName("__metadata__"))
        XCTAssertEqual(problem { try SafeTensors.write([("a", t), ("b", t), ("a", t)], to: path) }, .duplicateName("a"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testFailedWriteLeavesNoPartialFile() throws {
        let t = try Tensor.randomNormal([64, 64], seed: 5)
        // The directory does not exist: nothing can be created.
        let missing = dir + "/no/such/dir/out.safetensors"
        guard case .cannotWrite? = problem({ try SafeTensors.write([("t", t)], to: missing) }) else { return XCTFail("missing directory") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: missing))
        // The rename fails (the target is a non-empty directory) after the data was written: the
        // temporary file is removed and the target is untouched.
        let target = dir + "/target.safetensors"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        _ = FileManager.default.createFile(atPath: target + "/keep", contents: Data([1]))
        guard case .cannotWrite? = problem({ try SafeTensors.write([("t", t)], to: target) }) else { return XCTFail("rename over a directory") }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["target.safetensors"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: target), ["keep"])
        // An existing file is replaced whole, and no temporary file stays behind.
        let path = dir + "/model.safetensors"
        try SafeTensors.write([("old", t)], to: path)
        try SafeTensors.write([("new", try Tensor(zeros: [1]))], to: path)
        XCTAssertEqual(try SafeTensors.read(path).names, ["new"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["model.safetensors", "target.safetensors"])
        // A read-only directory (permissions do not bind root, which the check then skips).
        if geteuid() != 0 {
            let locked = dir + "/locked"
            try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: false)
            chmod(locked, 0o555)
            defer { chmod(locked, 0o755) }
            guard case .cannotWrite? = problem({ try SafeTensors.write([("t", t)], to: locked + "/x.safetensors") }) else {
                return XCTFail("read-only directory")
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: locked), [])
        }
    }
}
