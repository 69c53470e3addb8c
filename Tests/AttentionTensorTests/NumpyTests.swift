import AttentionTensor
import Foundation
import XCTest

final class NumpyTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "npy-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// A .npy file with the given header dict and payload (format 1.0 unless `version` says).
    func file(_ name: String, dict: String, payload: [UInt8], version: UInt8 = 1) -> String {
        var text = dict
        let prefix = version == 1 ? 10 : 12
        text += String(repeating: " ", count: (64 - (prefix + text.utf8.count + 1) % 64) % 64) + "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [version, 0]
        let n = text.utf8.count
        bytes += version == 1 ? [UInt8(n & 0xff), UInt8(n >> 8)] : [UInt8(n & 0xff), UInt8((n >> 8) & 0xff), 0, 0]
        bytes += Array(text.utf8) + payload
        let path = dir + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func floatBytes(_ xs: [Float]) -> [UInt8] { xs.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) } }

    func problem(_ body: () throws -> Void) -> NumpyProblem? {
        do { try body(); return nil } catch let e as NumpyError { return e.problem } catch { return nil }
    }

    func testRoundTripFloat32() throws {
        let t = try Tensor.randomNormal([2, 3, 5, 7], seed: 1)
        let path = dir + "/t.npy"
        try Numpy.write(t, to: path)
        let back = try Numpy.readTensor(path)
        XCTAssertEqual(back.shape, t.shape)
        XCTAssertEqual(back.scalars, t.scalars)
        // The header is padded to a 64-byte boundary as NumPy writes it.
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual((data.count - 2 * 3 * 5 * 7 * 4) % 64, 0)
        // Writing a strided view writes its elements in row-major order.
        let view = try t.heads(1..<3).rows(2..<4)
        try Numpy.write(view, to: path)
        XCTAssertEqual(try Numpy.readTensor(path).scalars, view.scalars)
    }

    func testReadsFloat64Version2AndIntegers() throws {
        let f8 = file("f8.npy", dict: "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
                      payload: [1.5, -2.25, 1e-3].flatMap { withUnsafeBytes(of: ($0 as Double).bitPattern.littleEndian, Array.init) })
        XCTAssertEqual(try Numpy.readTensor(f8).scalars, [1.5, -2.25, Float(1e-3)])
        let v2 = file("v2.npy", dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }",
                      payload: floatBytes([3, 4]), version: 2)
        XCTAssertEqual(try Numpy.readTensor(v2).shape, [1, 2])
        let i4 = file("i4.npy", dict: "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }",
                      payload: [1, -2, 3, 40].flatMap { withUnsafeBytes(of: Int32($0).littleEndian, Array.init) })
        XCTAssertEqual(try Numpy.readIntegers(i4).values, [1, -2, 3, 40])
        let i8 = file("i8.npy", dict: "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }",
                      payload: [7, 8, -9].flatMap { withUnsafeBytes(of: Int64($0).littleEndian, Array.init) })
        XCTAssertEqual(try Numpy.readIntegers(i8).shape, [3])
        XCTAssertEqual(try Numpy.readIntegers(i8).values, [7, 8, -9])
        // A scalar (shape ()) and an empty array.
        let scalar = file("s.npy", dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", payload: floatBytes([2]))
        XCTAssertEqual(try Numpy.readTensor(scalar).scalars, [2])
        let empty = file("e.npy", dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", payload: [])
        XCTAssertEqual(try Numpy.readTensor(empty).shape, [0, 4])
    }

    func testMalformedFilesGiveTypedErrorsNamingTheFile() throws {
        let ok = "'fortran_order': False, 'shape': (2, 2), }"
        XCTAssertEqual(problem { _ = try Numpy.readTensor(self.file("f.npy", dict: "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", payload: floatBytes([1, 2, 3, 4]))) }, .fortranOrder)
        XCTAssertEqual(problem { _ = try Numpy.readTensor(self.file("be.npy", dict: "{'descr': '>f4', " + ok, payload: floatBytes([1, 2, 3, 4]))) }, .bigEndian(">f4"))
        XCTAssertEqual(problem { _ = try Numpy.readTensor(self.file("i1.npy", dict: "{'descr': '|i1', " + ok, payload: [1, 2, 3, 4])) }, .unsupportedDType("|i1"))
        XCTAssertEqual(problem { _ = try Numpy.readTensor(self.file("short.npy", dict: "{'descr': '<f4', " + ok, payload: floatBytes([1, 2, 3]))) }, .truncatedData(needed: 16, available: 12))
        let huge = problem { _ = try Numpy.readTensor(self.file("huge.npy", dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000, 100000), }", payload: [0, 0, 0, 0])) }
        guard case .malformedHeader? = huge else { return XCTFail("huge header: \(String(describing: huge))") }
        // Representable but absent: 10^10 floats claimed, 4 bytes present. Refused before allocating.
        XCTAssertEqual(problem { _ = try Numpy.readTensor(self.file("big.npy", dict: "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }", payload: [0, 0, 0, 0])) },
                       .truncatedData(needed: 40_000_000_000, available: 4))
        XCTAssertEqual(problem { _ = try Numpy.readTensor(self.file("nodescr.npy", dict: "{" + ok, payload: [])) }, .malformedHeader("no 'descr'"))
        if case .malformedHeader? = problem({ _ = try Numpy.readTensor(self.file("garbage.npy", dict: "{'descr': '<f4', 'shape': (2, x), }", payload: [])) }) {} else { XCTFail("garbage shape") }
        // Truncated inside the header; not a .npy at all; missing; a directory.
        let cut = dir + "/cut.npy"
        _ = FileManager.default.createFile(atPath: cut, contents: Data([0x93] + Array("NUMPY".utf8) + [1, 0, 118, 0] + Array("{'descr'".utf8)))
        XCTAssertEqual(problem { _ = try Numpy.readTensor(cut) }, .truncatedHeader)
        let text = dir + "/text.npy"
        _ = FileManager.default.createFile(atPath: text, contents: Data("hello world".utf8))
        XCTAssertEqual(problem { _ = try Numpy.readTensor(text) }, .notNumpy)
        if case .cannotOpen? = problem({ _ = try Numpy.readTensor(self.dir + "/missing.npy") }) {} else { XCTFail("missing") }
        if case .cannotOpen? = problem({ _ = try Numpy.readTensor(self.dir) }) {} else { XCTFail("directory") }
        // Rank check and integer/float mix-ups.
        let f = file("r.npy", dict: "{'descr': '<f4', " + ok, payload: floatBytes([1, 2, 3, 4]))
        XCTAssertEqual(problem { _ = try Numpy.readTensor(f, rank: 4) }, .wrongRank(expected: 4, got: [2, 2]))
        if case .unsupportedDType? = problem({ _ = try Numpy.readIntegers(f) }) {} else { XCTFail("float as ints") }
        // The error text names the file.
        do { _ = try Numpy.readTensor(text) } catch { XCTAssertTrue("\(error)".contains("text.npy")) }
    }

    func testFailedWriteLeavesNoFile() throws {
        let t = try Tensor(zeros: [2])
        XCTAssertThrowsError(try Numpy.write(t, to: dir + "/no/such/dir/out.npy"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/no/such/dir/out.npy"))
    }
}
