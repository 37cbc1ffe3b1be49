// add.cu: element-wise ops. `add_f32` matches backend::cpu::ops::add (`x += y`, the residual connection). The forward pass
// fuses this into the epilogue of the output projections (matvec `mode` 1); this kernel is the
// standalone op for tests and the debug path.
//
// Launch: grid (ceil(n/256)), block 256, one element per thread.
extern "C" __global__ void add_f32(float* __restrict__ x, const float* __restrict__ y, int n) {
    pdl_launch();
    pdl_wait();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] + y[i];
}

// exp_f32: out = expf_glibc(x), the f32::exp that ops::softmax and ops::silu call; exposed so the
// parity tests can check the port bitwise on many inputs. Launch as add_f32.
extern "C" __global__ void exp_f32(const float* __restrict__ x, float* __restrict__ out, int n) {
    pdl_launch();
    pdl_wait();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = expf_glibc(x[i]);
}

// scale_f32: matches backend::cpu::ops::scale (`x *= s`, ggml_scale without bias). Launch as add_f32.
extern "C" __global__ void scale_f32(float* __restrict__ x, float s, int n) {
    pdl_launch();
    pdl_wait();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * s;
}
