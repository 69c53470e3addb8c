import ArgumentParser
import AttnCommands
import Foundation
import XCTest

/// `attn lm pretrained-temp-lora | pretrained-sparse | pretrained-infini`: options are parsed and
/// bad ones refused at parse time (validate), before any model is loaded.
final class PretrainedRecipeArgumentTests: XCTestCase {
    func testRecipeCommandsParseAndRefuseBadOptions() throws {
        let m = ["--model", "m.gguf"]
        XCTAssertNoThrow(try Attn.parseAsRoot(["lm", "pretrained-temp-lora"] + m + ["--books", "Job,Luke,Heb", "--json", "o.json"]))
        XCTAssertNoThrow(try Attn.parseAsRoot(["lm", "pretrained-sparse"] + m + ["--attention", "bigbird", "--block-size", "64",
                                                                               "--window-blocks", "3", "--random-blocks", "2", "--ctx", "4096,16384"]))
        XCTAssertNoThrow(try Attn.parseAsRoot(["lm", "pretrained-sparse"] + m + ["--attention", "sliding", "--sliding-window", "512",
                                                                               "--layers", "all", "--passkey-lengths", "1024"]))
        XCTAssertNoThrow(try Attn.parseAsRoot(["lm", "pretrained-infini"] + m + ["--segment", "1024", "--update", "delta"]))
        for bad in [["lm", "pretrained-temp-lora"] + m + ["--chunk", "1"],
                    ["lm", "pretrained-temp-lora"] + m + ["--rank", "0"],
                    ["lm", "pretrained-temp-lora"] + m + ["--lr", "0"],
                    ["lm", "pretrained-temp-lora"] + m + ["--window", "-1"],
                    ["lm", "pretrained-temp-lora"] + m + ["--threads", "0"],
                    ["lm", "pretrained-sparse"] + m + ["--attention", "linear"],
                    ["lm", "pretrained-sparse"] + m + ["--layers", "some"],
                    ["lm", "pretrained-sparse"] + m + ["--attention", "bigbird", "--window-blocks", "2"],
                    ["lm", "pretrained-sparse"] + m + ["--attention", "sliding", "--sliding-window", "0"],
                    ["lm", "pretrained-sparse"] + m + ["--ctx", "4096,x"],
                    ["lm", "pretrained-sparse"] + m + ["--passkey-depths", "1.5"],
                    ["lm", "pretrained-sparse"] + m + ["--score-last", "-1"],
                    ["lm", "pretrained-infini"] + m + ["--update", "fast"],
                    ["lm", "pretrained-infini"] + m + ["--segment", "0"],
                    ["lm", "pretrained-infini"] + m + ["--beta-init", "nan"],
                    ["lm", "pretrained-sparse"]] {
            XCTAssertThrowsError(try Attn.parseAsRoot(bad), "\(bad)") { e in
                // A usage error (exit code 64), never a crash or a model load.
                XCTAssertEqual(Attn.exitCode(for: e).rawValue, 64, "\(bad): \(e)")
            }
        }
    }
}
