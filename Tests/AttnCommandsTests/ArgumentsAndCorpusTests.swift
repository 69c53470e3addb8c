import ArgumentParser
import AttentionTensor
import AttnCommands
import Foundation
import XCTest

/// `attn`'s argument handling, and the fuzzers' committed corpora replayed as regression tests.
final class ArgumentsAndCorpusTests: XCTestCase {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func testValidAndInvalidArguments() throws {
        XCTAssertNoThrow(try Attn.parseAsRoot(["run", "full", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--causal", "--tiled"]))
        XCTAssertNoThrow(try Attn.parseAsRoot(["run", "bigbird", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--random-plan", "p.npy"]))
        XCTAssertNoThrow(try Attn.parseAsRoot(["run", "infini", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--segment", "32", "--update", "delta"]))
        let grad = ["--q", "q", "--k", "k", "--v", "v", "--dout", "g", "--dq", "a", "--dk", "b", "--dv", "c"]
        XCTAssertNoThrow(try Attn.parseAsRoot(["grad", "full", "--causal"] + grad))
        XCTAssertNoThrow(try Attn.parseAsRoot(["grad", "bigbird", "--random-plan", "p.npy", "--causal"] + grad))
        XCTAssertNoThrow(try Attn.parseAsRoot(["grad", "linear", "--feature-map", "softmax"] + grad))
        XCTAssertNoThrow(try Attn.parseAsRoot(["grad", "infini", "--segment", "8", "--dbeta", "d"] + grad))
        for bad in [["grad", "full"] + grad.dropLast(2),                                   // no --dv
                    ["grad", "full", "--threads", "0"] + grad,
                    ["grad", "full", "--q", "q", "--k", "k", "--v", "v", "--dout", "g", "--dq", "a", "--dk", "a", "--dv", "c"],
                    ["grad", "linear", "--feature-map", "softmax", "--causal"] + grad,
                    ["grad", "infini"] + grad] {
            XCTAssertThrowsError(try Attn.parseAsRoot(bad), "\(bad)")
        }
        for bad in [["run", "full", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--frobnicate"],
                    ["run", "full", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--tiled", "--materialized"],
                    ["run", "full", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--scale", "nan"],
                    ["run", "full", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--threads", "0"],
                    ["run", "linear", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--feature-map", "softmax", "--causal"],
                    ["run", "linear", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--feature-map", "cosine"],
                    ["run", "infini", "--q", "q", "--k", "k", "--v", "v", "-o", "o", "--segment", "0"],
                    ["run", "infini", "--q", "q", "--k", "k", "--v", "v", "-o", "o"],
                    ["pattern", "bigbird", "--seq-len", "100", "-o", "x.png"],
                    ["needle", "--depths", "101"],
                    ["run", "full", "--q", "q"]] {
            XCTAssertThrowsError(try Attn.parseAsRoot(bad), "\(bad)")
        }
    }

    /// Every file of the .npy fuzz corpus gives a tensor or a typed NumpyError.
    func testNpyCorpusReplays() throws {
        let dir = root.appendingPathComponent("Fuzz/corpus/npy").path
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        XCTAssertGreaterThan(files.count, 10)
        var parsed = 0, refused = 0
        for f in files {
            let bytes = [UInt8](FileManager.default.contents(atPath: dir + "/" + f) ?? Data())
            do {
                _ = try Numpy.readTensor(bytes: bytes, name: f)
                parsed += 1
            } catch let e as NumpyError {
                XCTAssertEqual(e.path, f)
                refused += 1
            } catch {
                // Integer files read as floats are refused above; a tensor allocation error is typed too.
                XCTAssertTrue(error is TensorError, "\(f): \(error)")
                refused += 1
            }
        }
        XCTAssertGreaterThan(parsed, 2)
        XCTAssertGreaterThan(refused, 5)
        XCTAssertEqual(try Numpy.readIntegers(bytes: [UInt8](FileManager.default.contents(atPath: dir + "/i4_plan.npy")!)).values, Array(0..<8))
    }

    /// Every file of the argument corpus parses to a command or is refused with a message and a
    /// failing exit code (never a trap); which one is known per file: `help` asks for help (a
    /// command or a clean exit), `run_full` is a valid command, the others are refused.
    func testArgumentCorpusReplays() throws {
        let dir = root.appendingPathComponent("Fuzz/corpus/args").path
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        XCTAssertGreaterThanOrEqual(files.count, 9)
        let valid: Set<String> = ["run_full"], help: Set<String> = ["help"]
        for f in files {
            let bytes = [UInt8](FileManager.default.contents(atPath: dir + "/" + f) ?? Data())
            let args = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            do {
                _ = try Attn.parseAsRoot(args)
                XCTAssertTrue(valid.contains(f) || help.contains(f), "\(f): \(args) parsed, but the corpus keeps it as an invalid input")
            } catch {
                let code = Attn.exitCode(for: error), message = Attn.message(for: error)
                XCTAssertFalse(valid.contains(f), "\(f): \(args) refused: \(message)")
                XCTAssertFalse(message.isEmpty, "\(f): an error without a message")
                if help.contains(f) {
                    XCTAssertEqual(code, .success, "\(f): help")
                } else {
                    XCTAssertNotEqual(code, .success, "\(f): \(args) refused with exit code 0: \(message)")
                }
            }
        }
    }
}
