// Checkpoint and gradient-dump files: the schema of DESIGN.md on top of trainer/hdf5.h.
#include "trainer/checkpoint.h"

#include <algorithm>
#include <set>
#include <type_traits>

#include "trainer/hdf5.h"

namespace fg::trainer {

namespace {

constexpr size_t kMaxListedProblems = 3;

// Names become HDF5 link names: flat (no '/'), so "layers.0.attn.wo.weight" stays one name.
void check_names(const std::string& path, const char* what, const NamedTensors& tensors) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    FG_CHECK(!name.empty() && name != "." && name.find('/') == std::string::npos, path, ": ", what,
             " name '", name, "' is not a valid dataset name (empty, '.' or contains '/')");
    FG_CHECK(seen.insert(name).second, path, ": ", what, " name '", name, "' appears twice");
    FG_CHECK(t.defined(), path, ": ", what, " tensor '", name, "' is undefined");
  }
}

// What differs between tensors and a parameter table: missing, mis-shaped, extra names.
std::vector<std::string> tensor_problems(
    const std::string& path, const NamedTensors& got,
    const std::vector<std::pair<std::string, Shape>>& expected) {
  std::map<std::string, const Tensor*> unmatched;
  for (const auto& [name, t] : got)
    FG_CHECK(unmatched.emplace(name, &t).second, path, ": parameter ", name, " appears twice");
  std::vector<std::string> problems;
  for (const auto& [name, shape] : expected) {
    auto it = unmatched.find(name);
    if (it == unmatched.end()) {
      problems.push_back(str_cat(name, " is missing (the model expects ", shape_str(shape), ")"));
      continue;
    }
    if (it->second->shape() != shape)
      problems.push_back(str_cat(name, " is ", it->second->shape_str(), " but the model expects ",
                                 shape_str(shape)));
    unmatched.erase(it);
  }
  for (const auto& [name, t] : got)
    if (unmatched.count(name))
      problems.push_back(str_cat(name, " ", t.shape_str(), " is not a parameter of the model"));
  return problems;
}

// "a; b; c; and 4 more"
std::string join_problems(const std::vector<std::string>& problems) {
  std::string joined = problems[0];
  for (size_t i = 1; i < std::min(problems.size(), kMaxListedProblems); ++i)
    joined += "; " + problems[i];
  if (problems.size() > kMaxListedProblems)
    joined += str_cat("; and ", problems.size() - kMaxListedProblems, " more");
  return joined;
}

// exp_avg / exp_avg_sq must hold the model's names with the model's shapes.
void check_same_names(const std::string& path, const char* what, const NamedTensors& got,
                      const NamedTensors& model) {
  std::vector<std::pair<std::string, Shape>> expected;
  for (const auto& [name, t] : model) expected.emplace_back(name, t.shape());
  std::vector<std::string> problems = tensor_problems(path, got, expected);
  FG_CHECK(problems.empty(), path, ": ", what,
           " does not match the model tensors: ", join_problems(problems));
}

void write_tensors(hid_t loc, const std::string& group, const NamedTensors& tensors,
                   const std::string& file) {
  H5Group g = h5_create_group(loc, group, file);
  for (const auto& [name, t] : tensors) h5_write_tensor(g.id(), name, t, file);
}

NamedTensors read_tensors(hid_t loc, const std::string& group, const std::string& file) {
  H5Group g = h5_open_group(loc, group, file);
  NamedTensors tensors;
  for (std::string& name : h5_list_datasets(g.id(), file)) {
    Tensor t = h5_read_tensor(g.id(), name, file);
    tensors.emplace_back(std::move(name), std::move(t));
  }
  return tensors;
}

void write_config(hid_t file_id, const GPTConfig& config, const std::string& file) {
  H5Group g = h5_create_group(file_id, "config", file);
  config.visit_fields([&](const char* name, const auto& value) {
    using V = std::decay_t<decltype(value)>;
    if constexpr (std::is_same_v<V, bool>) {
      h5_write_attr_int(g.id(), name, value ? 1 : 0, file);
    } else if constexpr (std::is_same_v<V, double>) {
      h5_write_attr_double(g.id(), name, value, file);
    } else {
      static_assert(std::is_same_v<V, int64_t>, "config fields are int64_t, double or bool");
      h5_write_attr_int(g.id(), name, value, file);
    }
  });
}

GPTConfig read_config(hid_t file_id, const std::string& file) {
  H5Group g = h5_open_group(file_id, "config", file);
  GPTConfig config;
  std::set<std::string> known;
  config.visit_fields([&](const char* name, auto& value) {
    known.insert(name);
    using V = std::remove_reference_t<decltype(value)>;
    if constexpr (std::is_same_v<V, bool>) {
      int64_t v = h5_read_attr_int(g.id(), name, file);
      FG_CHECK(v == 0 || v == 1, file, ": /config ", name, " is ", v, ", expected 0 or 1");
      value = v == 1;
    } else if constexpr (std::is_same_v<V, double>) {
      value = h5_read_attr_double(g.id(), name, file);
    } else {
      value = h5_read_attr_int(g.id(), name, file);
    }
  });
  for (const std::string& name : h5_list_attrs(g.id(), file))
    FG_CHECK(known.count(name), file, ": /config has field '", name,
             "' that this build does not know (written by a newer fusegpt?)");
  try {
    config.validate();
  } catch (const Error& e) {
    FG_THROW(file, ": invalid /config: ", e.what());
  }
  return config;
}

void check_for_save(const std::string& path, const CheckpointData& data) {
  check_names(path, "model", data.model);
  check_names(path, "exp_avg", data.exp_avg);
  check_names(path, "exp_avg_sq", data.exp_avg_sq);
  check_same_names(path, "optimizer exp_avg", data.exp_avg, data.model);
  check_same_names(path, "optimizer exp_avg_sq", data.exp_avg_sq, data.model);
  FG_CHECK(data.tokenizer_kind == "byte" || data.tokenizer_kind == "char", path,
           ": tokenizer kind '", data.tokenizer_kind, "' is not 'byte' or 'char'");
  FG_CHECK(data.tokenizer_kind == "char" || data.tokenizer_vocab.empty(), path,
           ": a byte tokenizer has no vocab, but ", data.tokenizer_vocab.size(),
           " characters were given");
  std::set<std::string> keys;
  auto add_keys = [&](const auto& map) {
    for (const auto& [name, v] : map)
      FG_CHECK(!name.empty() && keys.insert(name).second, path, ": /trainer attribute '", name,
               "' is empty or given twice");
  };
  add_keys(data.trainer_ints);
  add_keys(data.trainer_floats);
  add_keys(data.trainer_strings);
  try {
    data.config.validate();
  } catch (const Error& e) {
    FG_THROW(path, ": invalid config: ", e.what());
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const CheckpointData& data) {
  check_for_save(path, data);
  h5_write_file_atomically(path, [&](hid_t file_id, const std::string& file) {
    h5_write_attr_string(file_id, "format", kCheckpointFormat, file);
    h5_write_attr_int(file_id, "format_version", kCheckpointFormatVersion, file);
    h5_write_attr_int(file_id, "step", data.step, file);
    h5_write_attr_int(file_id, "tokens_seen", data.tokens_seen, file);
    write_config(file_id, data.config, file);
    write_tensors(file_id, "model", data.model, file);
    {
      H5Group opt = h5_create_group(file_id, "optimizer", file);
      h5_write_attr_double(opt.id(), "lr", data.optimizer.lr, file);
      h5_write_attr_double(opt.id(), "beta1", data.optimizer.beta1, file);
      h5_write_attr_double(opt.id(), "beta2", data.optimizer.beta2, file);
      h5_write_attr_double(opt.id(), "eps", data.optimizer.eps, file);
      h5_write_attr_double(opt.id(), "weight_decay", data.optimizer.weight_decay, file);
      h5_write_attr_int(opt.id(), "step", data.optimizer.step, file);
      write_tensors(opt.id(), "exp_avg", data.exp_avg, file);
      write_tensors(opt.id(), "exp_avg_sq", data.exp_avg_sq, file);
    }
    {
      H5Group trainer = h5_create_group(file_id, "trainer", file);
      for (const auto& [name, v] : data.trainer_ints)
        h5_write_attr_int(trainer.id(), name, v, file);
      for (const auto& [name, v] : data.trainer_floats)
        h5_write_attr_double(trainer.id(), name, v, file);
      for (const auto& [name, v] : data.trainer_strings)
        h5_write_attr_string(trainer.id(), name, v, file);
    }
    H5Group tok = h5_create_group(file_id, "tokenizer", file);
    h5_write_attr_string(tok.id(), "kind", data.tokenizer_kind, file);
    if (data.tokenizer_kind == "char")
      h5_write_bytes(tok.id(), "vocab", data.tokenizer_vocab, file);
  });
}

CheckpointData load_checkpoint(const std::string& path) {
  H5File file = h5_open_file(path);
  const hid_t root = file.id();
  FG_CHECK(h5_has_attr(root, "format", path), path,
           ": not a fusegpt checkpoint (no 'format' attribute on /)");
  std::string format = h5_read_attr_string(root, "format", path);
  FG_CHECK(format == kCheckpointFormat, path, ": format is '", format, "', expected '",
           kCheckpointFormat, "'");
  int64_t version = h5_read_attr_int(root, "format_version", path);
  FG_CHECK(version == kCheckpointFormatVersion, path, ": format_version ", version,
           " is not supported (this build reads format_version ", kCheckpointFormatVersion, ")");

  CheckpointData data;
  data.step = h5_read_attr_int(root, "step", path);
  data.tokens_seen = h5_read_attr_int(root, "tokens_seen", path);
  data.config = read_config(root, path);
  data.model = read_tensors(root, "model", path);
  {
    H5Group opt = h5_open_group(root, "optimizer", path);
    data.optimizer.lr = h5_read_attr_double(opt.id(), "lr", path);
    data.optimizer.beta1 = h5_read_attr_double(opt.id(), "beta1", path);
    data.optimizer.beta2 = h5_read_attr_double(opt.id(), "beta2", path);
    data.optimizer.eps = h5_read_attr_double(opt.id(), "eps", path);
    data.optimizer.weight_decay = h5_read_attr_double(opt.id(), "weight_decay", path);
    data.optimizer.step = h5_read_attr_int(opt.id(), "step", path);
    data.exp_avg = read_tensors(opt.id(), "exp_avg", path);
    data.exp_avg_sq = read_tensors(opt.id(), "exp_avg_sq", path);
  }
  check_same_names(path, "/optimizer/exp_avg", data.exp_avg, data.model);
  check_same_names(path, "/optimizer/exp_avg_sq", data.exp_avg_sq, data.model);
  {
    H5Group trainer = h5_open_group(root, "trainer", path);
    for (const std::string& name : h5_list_attrs(trainer.id(), path)) {
      switch (h5_attr_kind(trainer.id(), name, path)) {
        case H5AttrKind::Int:
          data.trainer_ints[name] = h5_read_attr_int(trainer.id(), name, path);
          break;
        case H5AttrKind::Float:
          data.trainer_floats[name] = h5_read_attr_double(trainer.id(), name, path);
          break;
        case H5AttrKind::String:
          data.trainer_strings[name] = h5_read_attr_string(trainer.id(), name, path);
          break;
        case H5AttrKind::Other:
          FG_THROW(path, ": /trainer attribute '", name, "' is not an integer, float or string");
      }
    }
  }
  H5Group tok = h5_open_group(root, "tokenizer", path);
  data.tokenizer_kind = h5_read_attr_string(tok.id(), "kind", path);
  FG_CHECK(data.tokenizer_kind == "byte" || data.tokenizer_kind == "char", path,
           ": /tokenizer kind is '", data.tokenizer_kind, "', expected 'byte' or 'char'");
  if (data.tokenizer_kind == "char") data.tokenizer_vocab = h5_read_bytes(tok.id(), "vocab", path);
  return data;
}

void check_model_tensors(const std::string& path, const NamedTensors& got,
                         const std::vector<std::pair<std::string, Shape>>& expected) {
  std::vector<std::string> problems = tensor_problems(path, got, expected);
  FG_CHECK(problems.empty(), path, ": ", join_problems(problems));
}

void save_grad_dump(const std::string& path, double loss, const NamedTensors& grads) {
  check_names(path, "gradient", grads);
  h5_write_file_atomically(path, [&](hid_t file_id, const std::string& file) {
    h5_write_attr_double(file_id, "loss", loss, file);
    write_tensors(file_id, "grads", grads, file);
  });
}

double load_grad_dump(const std::string& path, NamedTensors* grads) {
  H5File file = h5_open_file(path);
  double loss = h5_read_attr_double(file.id(), "loss", path);
  *grads = read_tensors(file.id(), "grads", path);
  return loss;
}

}  // namespace fg::trainer
